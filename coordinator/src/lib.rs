//! The fleet coordinator (store, locks, scheduler, gRPC service) arrives with the fleet control plane.
