"""The PLE teacher: feature router, 7 heterogeneous experts, CGC/PLE extraction layers, losses, training."""
