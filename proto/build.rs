fn main() {
    println!("cargo:rerun-if-changed=flotilla/v1/flotilla.proto");
    // PROTOC comes from .cargo/config.toml (tools/protoc); fall back to the vendored binary directly.
    if std::env::var_os("PROTOC").is_none() {
        if let Ok(path) = protoc_bin_vendored::protoc_bin_path() {
            // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
            unsafe { std::env::set_var("PROTOC", path) };
        }
    }
    tonic_prost_build::configure()
        .compile_protos(&["flotilla/v1/flotilla.proto"], &["."])
        .expect("compiling flotilla/v1/flotilla.proto");
}
