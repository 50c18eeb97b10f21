"""`duplex bench operator`: the operator timed on a local control plane, a real cluster, or at
scale."""
