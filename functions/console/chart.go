package console

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
)

// The charts are SVG drawn on the server: a minute per column over the
// last hour, bars of completions stacked by final state, and lines of the
// latency percentiles. Colours come from CSS classes (no inline style).

const (
	chartWidth   = 560
	chartHeight  = 150
	chartLeft    = 44 // room for the y-axis labels
	chartBottom  = 20 // room for the x-axis labels
	chartMinutes = 60
)

// chartStates are the final states, in stacking order, with their classes.
var chartStates = []struct {
	state postgres.RequestState
	class string
}{
	{postgres.StateSucceeded, "s-ok"},
	{postgres.StateWebhookFailed, "s-hook"},
	{postgres.StateFailed, "s-bad"},
	{postgres.StateExpired, "s-exp"},
	{postgres.StateCanceled, "s-mute"},
}

type chartRect struct {
	X, Y, W, H float64
	Class      string
	Title      string
}

type chartTick struct {
	X, Y  float64
	Label string
}

type chartLine struct {
	Class, Label, Points string
	// Dots mark each minute's value, so a lone minute shows too.
	Dots []chartTick
}

type legendEntry struct {
	Class, Label string
}

// chart is one SVG chart.
type chart struct {
	Title         string
	Width, Height int
	PlotTop       float64
	PlotBottom    float64
	PlotLeft      float64
	PlotRight     float64
	Rects         []chartRect
	Lines         []chartLine
	YTicks        []chartTick
	XTicks        []chartTick
	Legend        []legendEntry
	Summary       string // the whole hour in words, for the caption and screen readers
}

// deploymentCharts are a deployment's two charts.
type deploymentCharts struct {
	Completions chart
	Latency     chart
}

// buildCharts draws each deployment's last hour from the per-minute rows,
// ending at the minute of now.
func buildCharts(stats []MinuteStat, now time.Time) map[string]deploymentCharts {
	end := now.UTC().Truncate(time.Minute)
	start := end.Add(-(chartMinutes - 1) * time.Minute)
	byDep := map[string][]MinuteStat{}
	for _, m := range stats {
		byDep[m.DeploymentID] = append(byDep[m.DeploymentID], m)
	}
	out := map[string]deploymentCharts{}
	for dep, rows := range byDep {
		var minutes [chartMinutes]*MinuteStat
		for i := range rows {
			idx := int(rows[i].Minute.UTC().Sub(start) / time.Minute)
			if idx >= 0 && idx < chartMinutes {
				minutes[idx] = &rows[i]
			}
		}
		out[dep] = deploymentCharts{Completions: completionsChart(minutes, start), Latency: latencyChart(minutes, start)}
	}
	return out
}

func newChart(title string, start time.Time) chart {
	c := chart{
		Title: title, Width: chartWidth, Height: chartHeight,
		PlotTop: 8, PlotBottom: chartHeight - chartBottom, PlotLeft: chartLeft, PlotRight: chartWidth - 8,
	}
	for i := 0; i < chartMinutes; i += 15 {
		c.XTicks = append(c.XTicks, chartTick{X: c.x(i) + c.colWidth()/2, Y: chartHeight - 5, Label: start.Add(time.Duration(i) * time.Minute).Format("15:04")})
	}
	c.XTicks = append(c.XTicks, chartTick{X: c.PlotRight - c.colWidth()/2, Y: chartHeight - 5, Label: "now"})
	return c
}

func (c *chart) colWidth() float64 { return (c.PlotRight - c.PlotLeft) / chartMinutes }
func (c *chart) x(i int) float64   { return c.PlotLeft + float64(i)*c.colWidth() }

// y maps v in [0, top] to the plot's height.
func (c *chart) y(v, top float64) float64 {
	return c.PlotBottom - (c.PlotBottom-c.PlotTop)*v/top
}

func (c *chart) yTicks(top float64, label func(float64) string) {
	for _, f := range []float64{0, 0.5, 1} {
		c.YTicks = append(c.YTicks, chartTick{X: c.PlotLeft - 6, Y: c.y(top*f, top), Label: label(top * f)})
	}
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func completionsChart(minutes [chartMinutes]*MinuteStat, start time.Time) chart {
	c := newChart("Completions per minute", start)
	var peak, total int64
	totals := map[postgres.RequestState]int64{}
	for _, m := range minutes {
		if m == nil {
			continue
		}
		var sum int64
		for st, n := range m.ByState {
			sum += n
			totals[st] += n
		}
		peak, total = max(peak, sum), total+sum
	}
	top := niceCeil(float64(peak))
	c.yTicks(top, func(v float64) string { return fmt.Sprintf("%g", v) })
	w := c.colWidth()
	for i, m := range minutes {
		if m == nil {
			continue
		}
		base := 0.0
		for _, s := range chartStates {
			n := m.ByState[s.state]
			if n == 0 {
				continue
			}
			y0, y1 := c.y(base, top), c.y(base+float64(n), top)
			c.Rects = append(c.Rects, chartRect{
				X: c.x(i) + 0.5, Y: y1, W: max(1, w-1), H: y0 - y1, Class: s.class,
				Title: fmt.Sprintf("%s: %d %s", m.Minute.UTC().Format("15:04"), n, s.state),
			})
			base += float64(n)
		}
	}
	var parts []string
	for _, s := range chartStates {
		c.Legend = append(c.Legend, legendEntry{Class: s.class, Label: fmt.Sprintf("%s %d", s.state, totals[s.state])})
		if totals[s.state] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", totals[s.state], strings.ToLower(string(s.state))))
		}
	}
	c.Summary = fmt.Sprintf("%d finished in the last hour", total)
	if len(parts) > 0 {
		c.Summary += ": " + strings.Join(parts, ", ")
	}
	return c
}

func latencyChart(minutes [chartMinutes]*MinuteStat, start time.Time) chart {
	c := newChart("Latency, submit to final state", start)
	var peak time.Duration
	for _, m := range minutes {
		if m != nil {
			peak = max(peak, m.P99)
		}
	}
	top := niceCeil(peak.Seconds())
	c.yTicks(top, func(v float64) string { return formatDuration(time.Duration(v * float64(time.Second))) })
	w := c.colWidth()
	for _, series := range []struct {
		class, label string
		get          func(*MinuteStat) time.Duration
	}{
		{"l-p50", "p50", func(m *MinuteStat) time.Duration { return m.P50 }},
		{"l-p95", "p95", func(m *MinuteStat) time.Duration { return m.P95 }},
		{"l-p99", "p99", func(m *MinuteStat) time.Duration { return m.P99 }},
	} {
		var pts []string
		var dots []chartTick
		last := "–"
		for i, m := range minutes {
			if m == nil {
				continue
			}
			v := series.get(m)
			x, y := c.x(i)+w/2, c.y(v.Seconds(), top)
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			dots = append(dots, chartTick{X: x, Y: y, Label: fmt.Sprintf("%s %s: %s", m.Minute.UTC().Format("15:04"), series.label, formatDuration(v))})
			last = formatDuration(v)
		}
		c.Lines = append(c.Lines, chartLine{Class: series.class, Label: series.label, Points: strings.Join(pts, " "), Dots: dots})
		c.Legend = append(c.Legend, legendEntry{Class: series.class, Label: series.label + " " + last})
	}
	if c.Lines[0].Points == "" {
		c.Summary = "nothing finished in the last hour"
	} else {
		c.Summary = "latest minute with completions: " + c.Legend[0].Label + ", " + c.Legend[1].Label + ", " + c.Legend[2].Label
	}
	return c
}
