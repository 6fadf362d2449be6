//! The `flotilla.v1` protobuf API arrives with the fleet control plane.
