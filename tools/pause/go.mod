// The Pod sandbox process for the local cluster's containerd (its sandbox_image): no pause
// image can be pulled here. See tools/cluster.
module duplex.dev/tools/pause

go 1.22.0
