"""The pure core: no I/O, no clocks. Time arrives with each sample."""
