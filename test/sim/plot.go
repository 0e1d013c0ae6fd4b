package main

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotRuns draws completion time (p50, p99, max) against the number of
// hosts on a log axis, with the physical limit (size / host cap), for the
// simulator's runs (other scenarios, e.g. the cluster comparison, as
// single points).
func plotRuns(path string, outs []Output) error {
	var sim []Output
	var other []Output
	for _, o := range outs {
		if o.Scenario == "sim" {
			sim = append(sim, o)
		} else {
			other = append(other, o)
		}
	}
	slices.SortFunc(sim, func(a, b Output) int { return a.Hosts - b.Hosts })
	p := plot.New()
	p.Title.TextStyle.Font.Size = vg.Points(11)
	title := "Pouchfly simulator: completion time vs hosts"
	if len(outs) > 0 {
		o := outs[0]
		for _, x := range outs {
			if x.Detail.RTTMs > 0 { // a simulator run: it knows every setting
				o = x
				break
			}
		}
		sn := "uncapped"
		if o.Detail.SupernodeCapMbit > 0 {
			sn = fmt.Sprintf("%g Mbit/s", o.Detail.SupernodeCapMbit)
		}
		title += fmt.Sprintf("\n%s blob, hosts %g Mbit/s, origin %g Mbit/s, supernode %s, RTT %g ms",
			fmtSize(o.BlobBytes), o.HostCapMbit, o.OriginCapMbit, sn, o.Detail.RTTMs)
		if len(sim) > 0 {
			title += "\n" + sim[0].Detail.Variant
		} else {
			title += "\nsimulator (today's defaults) vs measurements"
		}
	}
	p.Title.Text = title
	p.X.Label.Text = "hosts"
	p.Y.Label.Text = "completion time (s)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())

	series := []struct {
		name  string
		get   func(Output) float64
		color color.Color
		dash  []vg.Length
	}{
		{"p50", func(o Output) float64 { return o.Seconds.P50 }, color.RGBA{0, 114, 178, 255}, nil},
		{"p99", func(o Output) float64 { return o.Seconds.P99 }, color.RGBA{230, 159, 0, 255}, nil},
		{"max", func(o Output) float64 { return o.Seconds.Max }, color.RGBA{213, 94, 0, 255}, nil},
		{"limit (size / host cap)", func(o Output) float64 { return o.LimitSeconds }, color.Black, []vg.Length{vg.Points(4), vg.Points(3)}},
	}
	for i, s := range series {
		src := sim
		if i == 3 {
			// The limit: at every N of any run.
			src = nil
			for _, o := range outs {
				if !slices.ContainsFunc(src, func(x Output) bool { return x.Hosts == o.Hosts }) {
					src = append(src, o)
				}
			}
			slices.SortFunc(src, func(a, b Output) int { return a.Hosts - b.Hosts })
		}
		pts := make(plotter.XYs, 0, len(src))
		for _, o := range src {
			pts = append(pts, plotter.XY{X: float64(o.Hosts), Y: s.get(o)})
		}
		if len(pts) == 0 {
			continue
		}
		l, sc, err := plotter.NewLinePoints(pts)
		if err != nil {
			return err
		}
		l.Color, l.Width, l.Dashes = s.color, vg.Points(1.5), s.dash
		sc.Color = s.color
		sc.Shape = draw.GlyphDrawer(draw.CircleGlyph{})
		if i == 3 {
			sc.Radius = 0
		}
		p.Add(l, sc)
		p.Legend.Add(s.name, l, sc)
	}
	// Other scenarios (comparisons): one glyph per scenario, p50 and max.
	palette := []color.Color{color.RGBA{0, 158, 115, 255}, color.RGBA{204, 121, 167, 255}, color.RGBA{86, 180, 233, 255}, color.RGBA{120, 120, 120, 255}}
	glyphs := []draw.GlyphDrawer{draw.CrossGlyph{}, draw.TriangleGlyph{}, draw.SquareGlyph{}, draw.PlusGlyph{}}
	var names []string
	for _, o := range other {
		if !slices.Contains(names, o.Scenario) {
			names = append(names, o.Scenario)
		}
	}
	for k, name := range names {
		var pts plotter.XYs
		for _, o := range other {
			if o.Scenario == name {
				pts = append(pts, plotter.XY{X: float64(o.Hosts), Y: o.Seconds.P50}, plotter.XY{X: float64(o.Hosts), Y: o.Seconds.Max})
			}
		}
		sc, err := plotter.NewScatter(pts)
		if err != nil {
			return err
		}
		sc.Shape = glyphs[k%len(glyphs)]
		sc.Radius = vg.Points(4)
		sc.Color = palette[k%len(palette)]
		p.Add(sc)
		p.Legend.Add(name+" (p50 and max)", sc)
	}
	return p.Save(8*vg.Inch, 5*vg.Inch, path)
}

func fmtSize(b int64) string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", b>>20)
	}
	return fmt.Sprintf("%d B", b)
}
