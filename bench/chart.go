package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Chart geometry, in pixels.
const (
	chartWidth  = 1200
	chartLeft   = 250 // configuration labels
	chartRight  = 110 // room for the value after the longest bar
	chartTop    = 64  // title and legend
	chartBar    = 11
	chartGap    = 12 // between configurations
	chartBottom = 24
)

var (
	colorBG   = color.RGBA{255, 255, 255, 255}
	colorText = color.RGBA{30, 30, 30, 255}
	colorGrid = color.RGBA{225, 225, 225, 255}
	colorFail = color.RGBA{200, 30, 30, 255}
)

// targetColor is each target's bar colour.
func targetColor(t string) color.RGBA {
	switch t {
	case targetDirect:
		return color.RGBA{140, 140, 140, 255}
	case targetBouncer:
		return color.RGBA{66, 118, 204, 255}
	}
	return color.RGBA{232, 128, 32, 255}
}

// writeChart draws the median TPS of every configuration and target as
// horizontal grouped bars.
func writeChart(path string, r *report) error {
	labels, cells := r.cells()
	targets := []string{targetDirect, targetBouncer, targetPgtoken}
	groupH := len(targets)*chartBar + chartGap
	height := chartTop + len(labels)*groupH + chartBottom
	img := image.NewRGBA(image.Rect(0, 0, chartWidth, height))
	draw.Draw(img, img.Bounds(), &image.Uniform{colorBG}, image.Point{}, draw.Src)

	maxTPS := 0.0
	for _, a := range cells {
		maxTPS = max(maxTPS, a.tpsMax)
	}
	if maxTPS == 0 {
		maxTPS = 1
	}
	plotW := chartWidth - chartLeft - chartRight
	scale := float64(plotW) / maxTPS

	// Vertical grid lines every "nice" step.
	step := niceStep(maxTPS / 6)
	for v := 0.0; v <= maxTPS; v += step {
		x := chartLeft + int(v*scale)
		fill(img, image.Rect(x, chartTop-6, x+1, height-chartBottom), colorGrid)
		text(img, x-12, height-8, num(v), colorText)
	}

	text(img, 10, 18, fmt.Sprintf("pgbench TPS, median of %v run(s), %v s each, pool %v: %s",
		r.Options["reps"], r.Options["T"], r.Options["pool"], r.Started.UTC().Format("2006-01-02")), colorText)
	lx := 10
	for _, t := range targets {
		fill(img, image.Rect(lx, 32, lx+14, 44), targetColor(t))
		text(img, lx+18, 43, t, colorText)
		lx += 120
	}
	text(img, lx, 43, "(thin line: min-max)", colorText)

	y := chartTop
	for _, l := range labels {
		text(img, 8, y+len(targets)*chartBar/2+5, l, colorText)
		for i, t := range targets {
			a, ok := cells[l+"|"+t]
			by := y + i*chartBar
			if !ok {
				continue
			}
			if a.tps == 0 {
				text(img, chartLeft+4, by+chartBar-1, t+": failed", colorFail)
				continue
			}
			w := max(1, int(a.tps*scale))
			fill(img, image.Rect(chartLeft, by+1, chartLeft+w, by+chartBar-1), targetColor(t))
			// min–max whisker
			x0, x1 := chartLeft+int(a.tpsMin*scale), chartLeft+int(a.tpsMax*scale)
			fill(img, image.Rect(x0, by+chartBar/2, x1+1, by+chartBar/2+1), colorText)
			label := num(a.tps)
			if a.failed > 0 {
				label += fmt.Sprintf(" (%d failed)", a.failed)
			}
			text(img, chartLeft+max(w, x1-chartLeft)+4, by+chartBar-1, label, colorText)
		}
		y += groupH
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	if err := png.Encode(f, img); err != nil {
		_ = f.Close()
		return fmt.Errorf("chart: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("chart: %w", err)
	}
	return nil
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

// text draws s with its baseline at (x, y).
func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: &image.Uniform{c}, Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// niceStep rounds a raw axis step up to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := 1.0
	for p*10 <= raw {
		p *= 10
	}
	for p > raw {
		p /= 10
	}
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}
