-- CIDR rules of a site at the gateway: comma-separated CIDRs (deny wins; an allow list, when
-- set, admits only its addresses).
ALTER TABLE site_access ADD COLUMN allow_cidrs TEXT;
ALTER TABLE site_access ADD COLUMN deny_cidrs TEXT;
