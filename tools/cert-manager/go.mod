// Pinned cert-manager, whose CRDs (deploy/crds in its module) the chart's Certificate and
// Issuer objects are checked against (tests/integration/test_chart_security.py). Nothing here
// is built: the test fetches the module with `go mod download` into the duplex cache.

module duplex.dev/tools/cert-manager

go 1.22.0

require github.com/cert-manager/cert-manager v1.21.2
