//! `firkin-sandbox-init`: the helper the Linux driver starts for each sandbox. It is not
//! meant to be run by hand; see `firkin_linux::sandbox` for the protocol.

#[allow(unsafe_code)]
fn main() {
    // SAFETY: first thing in `main`, so this process has its only thread; the driver started
    // it with its go and status pipes as stdin and stdout, and nothing here has touched them.
    unsafe { firkin_linux::sandbox::init::main_from_env() }
}
