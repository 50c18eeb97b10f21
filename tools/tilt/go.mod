// Pinned Tilt, for `tilt up` / `tilt ci` against the local cluster. Built from a copy of its
// own module, with its vendored dependencies and its web UI (see build_tilt in
// tools/build-test-binaries.sh); this module only pins the version and its checksum.

module duplex.dev/tools/tilt

go 1.22.0

require github.com/tilt-dev/tilt v0.33.21
