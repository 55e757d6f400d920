"""tfm benchmarks, side by side with PyTorch: `python -m benchmarks decode|forward|train|all [--backends CPU,CL] [--json FILE]`."""
