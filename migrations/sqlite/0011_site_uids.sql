-- Each live site runs its code as a uid of its own, from runtime.uid_range (issue: isolation).
-- Released (set to NULL) when the site is deleted; two live sites never share one.
ALTER TABLE sites ADD COLUMN uid INTEGER;
CREATE UNIQUE INDEX sites_uid ON sites (uid) WHERE uid IS NOT NULL;
