//! `pause`: what Kubernetes' pause container does: sleeps until SIGINT or
//! SIGTERM, then exits 0. A static program for pod sandbox images.
extern "C" fn done(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

fn main() {
    // SAFETY: installing plain handlers for two signals.
    unsafe {
        libc::signal(libc::SIGINT, done as *const () as usize);
        libc::signal(libc::SIGTERM, done as *const () as usize);
    }
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}
