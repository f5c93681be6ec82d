"""Training on Avalanche: strategies, benchmarks, streams, tensor batches, metrics, the run loop."""
