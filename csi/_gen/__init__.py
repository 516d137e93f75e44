"""Generated CSI v1 gRPC stubs (csi_pb2, csi_pb2_grpc) from csi/proto/csi.proto by tools/gen_csi_stubs.py; never edit by hand."""
