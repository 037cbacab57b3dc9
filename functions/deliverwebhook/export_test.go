package deliverwebhook

// SetOutcomeBatch caps the outcomes one statement records; zero keeps the
// default.
func SetOutcomeBatch(d *Deliverer, n int) {
	if n > 0 {
		d.outcomeBatch = n
	}
}

// SetDueTimer switches the sleep until the next due delivery on or off;
// off, only wake-ups and the poll find deliveries that come due.
func SetDueTimer(d *Deliverer, on bool) { d.dueTimer = on }

// Stats counts d's claim and outcome statements and the rows they carried,
// over its whole life.
type Stats struct{ Claims, Claimed, Writes, Written int64 }

// StatementStats returns d's statement counts.
func StatementStats(d *Deliverer) Stats {
	return Stats{
		Claims: d.stats.claims.Load(), Claimed: d.stats.claimed.Load(),
		Writes: d.stats.writes.Load(), Written: d.stats.written.Load(),
	}
}
