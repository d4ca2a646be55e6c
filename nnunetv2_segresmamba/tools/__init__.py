"""Tools around the stock nnU-Net CLI: synthetic data, the demo pipeline."""
