// The live loss chart (uPlot, vendored in ../vendor): training loss every step, validation loss where
// it was measured (sampled ~10 times a run; full validation at epoch ends). Updated in place.

/* global uPlot */

const SERIES = [
  { key: "train_loss", label: "train loss", stroke: "#2563eb", width: 1.5 },
  { key: "valid_loss", label: "valid loss", stroke: "#ea580c", width: 2, points: { show: true, size: 6 } },
  { key: "full_valid_loss", label: "full valid loss", stroke: "#16a34a", width: 2, points: { show: true, size: 7 } },
];

export class LossChart {
  constructor(container) {
    this.container = container;
    this.steps = new Map(); // step → metrics data; a re-trained step (after a resume) overwrites its old values
    this.plot = null;
    this.resize = new ResizeObserver(() => this.plot && this.plot.setSize(this.size()));
    this.resize.observe(container);
    this.container.dataset.points = "0";
  }

  size() {
    return { width: Math.max(320, this.container.clientWidth), height: 280 };
  }

  /** Add metrics events' data ({step, train_loss, …}); redraws once. */
  add(metrics) {
    for (const data of metrics) this.steps.set(data.step, data);
    this.draw();
  }

  clear() {
    this.steps.clear();
    this.draw();
  }

  draw() {
    const steps = [...this.steps.keys()].sort((a, b) => a - b);
    const data = [steps, ...SERIES.map((s) => steps.map((step) => this.steps.get(step)[s.key] ?? null))];
    this.container.dataset.points = String(steps.length);
    this.container.dataset.validPoints = String(data[2].filter((v, i) => v !== null || data[3][i] !== null).length);
    if (!steps.length) return;
    if (!this.plot) {
      const options = {
        ...this.size(),
        scales: { x: { time: false } },
        axes: [{ label: "step" }, { label: "loss" }],
        series: [
          { label: "step" },
          ...SERIES.map(({ label, stroke, width, points }) => ({ label, stroke, width, points, spanGaps: true })),
        ],
      };
      this.plot = new uPlot(options, data, this.container);
    } else {
      this.plot.setData(data);
    }
  }

  destroy() {
    this.resize.disconnect();
    if (this.plot) this.plot.destroy();
  }
}
