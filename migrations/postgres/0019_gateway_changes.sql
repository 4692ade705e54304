-- A counter of changes to what a gateway keeps of a site (its route, its access settings, the
-- site itself: name, state, protection), bumped by triggers in the writing transaction. A
-- gateway reads it once per gateway.cache_ttl_ms: unchanged, every site it keeps stays good
-- (a lookup costs the same with a thousand sites as with one); changed, each is read again.
CREATE TABLE gateway_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO gateway_changes (id, n) VALUES (1, 0);

CREATE FUNCTION gateway_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE gateway_changes SET n = n + 1 WHERE id = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER routes_changed AFTER INSERT OR UPDATE OR DELETE ON routes
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_changed();
CREATE TRIGGER site_access_changed AFTER INSERT OR UPDATE OR DELETE ON site_access
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_changed();
CREATE TRIGGER sites_changed AFTER INSERT OR DELETE OR UPDATE OF name, state, protected ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION gateway_changed();
