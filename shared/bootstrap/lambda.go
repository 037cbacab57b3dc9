package bootstrap

import (
	"context"
	"time"
)

const (
	// FlushTimeoutDefault bounds exporting an invocation's spans before it
	// returns.
	FlushTimeoutDefault = 2 * time.Second
	// TickMarginDefault is kept free before a scheduled invocation's
	// deadline: a tick stops claiming work this long before Lambda would
	// stop it, so what is under way can finish or be handed back.
	TickMarginDefault = 5 * time.Second
)

// Flushed wraps a Lambda handler so that the spans of each invocation are
// exported before it returns: Lambda may freeze the process as soon as it
// has, and a frozen process exports nothing. The functions wrap
// lambdahttp.Handler with it.
func Flushed[E, R any](p *Process, h func(context.Context, E) (R, error)) func(context.Context, E) (R, error) {
	return func(ctx context.Context, event E) (R, error) {
		defer p.flush(ctx)
		return h(ctx, event)
	}
}

func (p *Process) flush(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), FlushTimeoutDefault)
	defer cancel()
	if err := p.Tracer.Flush(ctx); err != nil {
		p.Logger.Warn("flush traces", "error", err)
	}
}

// Tick adapts a worker's Tick (processtick's or deliverwebhook's) to a
// scheduled Lambda invocation whose event (E, an EventBridge scheduled
// event) carries nothing the tick needs. The tick works for the
// configured TICK_BUDGET, cut short so that it stops claiming
// TickMarginDefault before the invocation's deadline; its result is logged
// and returned as the invocation's JSON answer, and its spans are flushed.
func Tick[E, R any](p *Process, tick func(context.Context, time.Duration) (R, error)) func(context.Context, E) (R, error) {
	return Flushed(p, func(ctx context.Context, _ E) (R, error) {
		budget := TickBudget(ctx, p.Config.Processor.TickBudget)
		started := time.Now()
		res, err := tick(ctx, budget)
		if err != nil {
			p.Logger.Error("tick", "budget", budget, "duration", time.Since(started), "error", err)
			return res, err
		}
		p.Logger.Info("tick", "budget", budget, "duration", time.Since(started), "result", res)
		return res, nil
	})
}

// TickBudget returns budget, shortened so that it ends TickMarginDefault
// before ctx's deadline, if ctx has one; never less than zero.
func TickBudget(ctx context.Context, budget time.Duration) time.Duration {
	if deadline, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(deadline)-TickMarginDefault)
	}
	return max(budget, 0)
}
