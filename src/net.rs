//! Network addresses as endor's config and access rules write them.

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a bare address (one host).
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!(
                "`{}` is not a CIDR such as 10.0.0.0/8 or ::1/128",
                s.escape_debug()
            )
        })
}
