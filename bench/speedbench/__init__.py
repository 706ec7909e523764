"""bench/speed.py's parts, one concern a module: `measure` (FLOPs, peaks, device clocks), `recipe` (the study's
Trainer side), `cpu_mode` (the two sides interleaved on real models), `synthetic` (the hub architectures with random
weights and rows), `gpu_stages` (the GPU session's stages). speed.py holds the command line and the results file."""
