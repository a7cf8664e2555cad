//! `firkin-sandbox-init`: the helper the Linux driver starts for each sandbox. It is not
//! meant to be run by hand; see `firkin_linux::sandbox` for the protocol.

fn main() {
    firkin_linux::sandbox::init::main_from_env()
}
