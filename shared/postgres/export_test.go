package postgres

// BatcherQueued is how many submits wait for a batch.
func BatcherQueued(b *RequestBatcher) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}
