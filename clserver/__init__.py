"""CL server: experiments, benchmarks, strategies, runner, drift, deployments, tracking."""
