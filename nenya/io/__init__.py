"""Files a run reads and writes: atomic writes, weights-only checkpoints, the run folder, HDF5 curves."""
