"""`duplex bench ...`: latency and timing measurements that print numbers."""
