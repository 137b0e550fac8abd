"""Local stand-ins for the network services the pipeline talks to, for tests and benchmarks."""
