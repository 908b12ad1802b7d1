"""The 7 shared experts of the heterogeneous first extraction layer, one module each."""
