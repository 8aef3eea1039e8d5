"""What flatrob writes: output files checked and written atomically, result documents and rows, figures."""
