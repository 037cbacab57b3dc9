package processtick

// SetBatchLimits caps the requests per claim and per completion statement
// of p; zero keeps the default.
func SetBatchLimits(p *Processor, claim, complete int) {
	if claim > 0 {
		p.claimBatch = claim
	}
	if complete > 0 {
		p.completeBatch = complete
	}
}

// SetCompleteBatchBytes caps the output bytes per completion statement of
// p.
func SetCompleteBatchBytes(p *Processor, n int) { p.completeBatchBytes = n }

// Stats counts p's claim and completion statements and the rows they
// carried, over its whole life.
type Stats struct {
	Claims, Claimed, Writes, Written int64
	// WriteBytesMax is the most output bytes one completion carried.
	WriteBytesMax int64
}

// StatementStats returns p's statement counts.
func StatementStats(p *Processor) Stats {
	return Stats{
		Claims: p.stats.claims.Load(), Claimed: p.stats.claimed.Load(),
		Writes: p.stats.writes.Load(), Written: p.stats.written.Load(),
		WriteBytesMax: p.stats.writeBytesMax.Load(),
	}
}

// SetDueTimes switches p's due-time timers on or off; off, claims wait for
// a wake-up or the poll, as before the timers.
func SetDueTimes(p *Processor, on bool) { p.noDueTimes = !on }
