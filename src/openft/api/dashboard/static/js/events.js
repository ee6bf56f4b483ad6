// A job's events, kept in the browser and topped up with only the new ones on each poll.
// The API lists events newest first and pages towards older ones (`after` = the last id seen), so new
// events are read from the first page down to the newest one already known.

import { get } from "./api.js";

const PAGE = 100;

export class EventFeed {
  constructor(jobId) {
    this.path = `/fine_tuning/jobs/${encodeURIComponent(jobId)}/events`;
    this.events = []; // newest first, as the API lists them
  }

  /**
   * Fetch what is new. Returns {fresh, reset}: `fresh` oldest first; `reset` when the newest known event
   * is gone (its steps were superseded after a crash and trained again), so everything was read anew.
   */
  async update() {
    const known = this.events.length ? this.events[0].id : null;
    const fresh = [];
    let after = null;
    let found = false;
    for (;;) {
      const query = after ? `?limit=${PAGE}&after=${encodeURIComponent(after)}` : `?limit=${PAGE}`;
      const page = await get(this.path + query);
      for (const event of page.data) {
        if (event.id === known) {
          found = true;
          break;
        }
        fresh.push(event);
      }
      if (found || !page.has_more || !page.data.length) break;
      after = page.data[page.data.length - 1].id;
    }
    const reset = known !== null && !found;
    this.events = reset ? fresh : [...fresh, ...this.events];
    return { fresh: fresh.reverse(), reset };
  }
}
