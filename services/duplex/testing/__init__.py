"""Real servers on loopback, for tests and for the benches that need them.

`redis_server` (Debian's redis-server), `apiserver` (kube-apiserver and etcd, envtest style)
and `kubelet` (worker Pods run as local processes). They ship in the package because
`duplex bench operator` and `duplex bench scale` use them; none is part of a deployment.

From a source checkout, kube-apiserver and etcd are built on first use by
tools/build-test-binaries.sh (cached outside the checkout). From an installed package they
are looked up on PATH: put them there to run those benches.
"""
