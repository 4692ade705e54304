-- A counter of changes to what a gateway keeps of a site (its route, its access settings, the
-- site itself: name, state, protection), bumped by triggers in the writing transaction. A
-- gateway reads it once per gateway.cache_ttl_ms: unchanged, every site it keeps stays good
-- (a lookup costs the same with a thousand sites as with one); changed, each is read again.
CREATE TABLE gateway_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO gateway_changes (id, n) VALUES (1, 0);

CREATE TRIGGER routes_inserted AFTER INSERT ON routes
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER routes_updated AFTER UPDATE ON routes
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER routes_deleted AFTER DELETE ON routes
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER site_access_inserted AFTER INSERT ON site_access
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER site_access_updated AFTER UPDATE ON site_access
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER site_access_deleted AFTER DELETE ON site_access
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sites_inserted AFTER INSERT ON sites
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sites_updated AFTER UPDATE OF name, state, protected ON sites
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
CREATE TRIGGER sites_deleted AFTER DELETE ON sites
BEGIN UPDATE gateway_changes SET n = n + 1 WHERE id = 1; END;
