"""CL server: experiments, deployments, training, drift, jobs, datasets, serving."""
