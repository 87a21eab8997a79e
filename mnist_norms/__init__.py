"""The library behind the assignment: what utils.py, train.py, the studies, tools and benchmarks share.

recipe (every setting of a run), data (MNIST, verified), augment (batched augmentation on the device), training (an
epoch, an evaluation), records (reading and summarising run files), files (atomic writes), machine (device, CPU
kernels, workers), figures (the graphs), cli (the commands' shared options and entry). The model itself is model.py at
the repository's root, which imports nothing from here.
"""
