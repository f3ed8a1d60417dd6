"""The signal task: the generator, HDF5 splits, the dataset, its metrics, model, figures and report."""
