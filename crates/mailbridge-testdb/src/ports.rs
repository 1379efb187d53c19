//! [`spare_ports`]: loopback ports for the servers the tests start (Dovecot, PostgreSQL,
//! chromedriver), chosen where nothing else will take them before the server binds.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::TcpListener;

use anyhow::bail;

/// The lowest port this module hands out: above the well-known and most registered services.
const FLOOR: u16 = 10_000;

/// `N` distinct free ports on 127.0.0.1, all held until all are chosen (so none is handed out
/// twice), then released for the caller's server to bind.
///
/// A port from `bind(0)` comes from the kernel's ephemeral range, which every outgoing
/// connection of the suite draws from too: between our release and the server's bind, a test's
/// client socket could take it, and Dovecot stops with "Address already in use" (CI saw it).
/// These ports come from below that range, where no client socket and no `bind(0)` lands; only
/// another caller of this function in a parallel test process could pick the same one, among
/// some twenty thousand.
pub fn spare_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let ceiling = ephemeral_start().unwrap_or(32_768);
    let span = u64::from(ceiling.saturating_sub(FLOOR));
    let mut held: Vec<TcpListener> = Vec::with_capacity(N);
    let mut tries = 0u64;
    while held.len() < N {
        tries += 1;
        let listener = if span < 1_000 {
            // An unusual ephemeral range leaves no room below it: the kernel's choice then.
            TcpListener::bind("127.0.0.1:0")
        } else if tries > 10_000 {
            bail!("no free port between {FLOOR} and {ceiling} on 127.0.0.1");
        } else {
            let port = FLOOR + u16::try_from(random() % span)?;
            TcpListener::bind(("127.0.0.1", port))
        };
        if let Ok(listener) = listener {
            let port = listener.local_addr()?.port();
            if held
                .iter()
                .all(|h| h.local_addr().is_ok_and(|a| a.port() != port))
            {
                held.push(listener);
            }
        }
    }
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A random number from the standard library's per-instance hash keys (no `rand` needed for
/// a port choice).
fn random() -> u64 {
    RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: [u16; 7] = spare_ports().unwrap();
        let ceiling = ephemeral_start().unwrap_or(32_768);
        for (i, port) in ports.iter().enumerate() {
            assert!(
                (FLOOR..ceiling).contains(port),
                "{port} outside {FLOOR}..{ceiling}"
            );
            assert!(!ports[..i].contains(port), "{port} twice in {ports:?}");
            TcpListener::bind(("127.0.0.1", *port)).unwrap();
        }
    }
}
