//! Sockets: non-blocking connects (optionally bound to a source address) and the open-file limit.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, OwnedFd};

use mio::net::TcpStream;

/// Starts a non-blocking connect to `dst`, from `src` if given. Completion is signalled by
/// writability (see [`connect_result`]).
pub fn connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match src {
        None => TcpStream::connect(dst)?,
        Some(ip) => bound_connect(dst, ip)?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// After a writable (or error) event on a connecting socket: Ok(true) connected, Ok(false) still
/// in progress, Err the connect failed.
pub fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

fn bound_connect(dst: SocketAddr, src: IpAddr) -> io::Result<TcpStream> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2); the descriptor is owned by `fd` at once.
    let raw = unsafe { libc::socket(domain, flags, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    bind_no_port(&fd, dst.is_ipv4());
    sys_addr(SocketAddr::new(src, 0), |sa, len| {
        // SAFETY: `sa` points to a sockaddr of `len` bytes for the call's duration.
        cvt(unsafe { libc::bind(raw, sa, len) })
    })?;
    let started = sys_addr(dst, |sa, len| {
        // SAFETY: as above.
        cvt(unsafe { libc::connect(raw, sa, len) })
    });
    match started {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

/// IP_BIND_ADDRESS_NO_PORT: pick the source port at connect time (per destination) rather than
/// at bind time, so each source address offers the whole ephemeral range. Best effort.
fn bind_no_port(fd: &OwnedFd, v4: bool) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    let level = if v4 {
        libc::IPPROTO_IP
    } else {
        libc::IPPROTO_IPV6
    };
    // SAFETY: setsockopt with a valid descriptor and a c_int option value.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` with `addr` as a C sockaddr.
fn sys_addr<T>(addr: SocketAddr, f: impl FnOnce(*const libc::sockaddr, libc::socklen_t) -> T) -> T {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr = libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            f((&sa as *const libc::sockaddr_in).cast(), len)
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            f((&sa as *const libc::sockaddr_in6).cast(), len)
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> io::Result<libc::rlim_t> {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        cvt(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        }
        Ok(lim.rlim_cur)
    }
}
