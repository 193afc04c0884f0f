// `linked`: a per-operation signal made from long-lived ones, which leaves
// nothing behind on them once the operation is done.

import { getEventListeners } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import t from "tap";
import { abortable, linked, withLinked } from "../src/abortable.js";

t.test("aborts with the first source that aborts, with its reason", async (t) => {
  const a = new AbortController();
  const b = new AbortController();
  const l = linked([a.signal, undefined, b.signal]);
  t.notOk(l.signal.aborted, "not aborted before its sources");
  const why = new Error("b stopped");
  b.abort(why);
  t.ok(l.signal.aborted, "aborted with b");
  t.equal(l.signal.reason, why, "with b's reason");
  t.equal(getEventListeners(a.signal, "abort").length, 0, "its listener on a is gone");
  a.abort(new Error("late"));
  t.equal(l.signal.reason, why, "a later abort changes nothing");
  l.done();
});

t.test("a source aborted already aborts it at once", async (t) => {
  const a = new AbortController();
  a.abort(new Error("before"));
  const b = new AbortController();
  const l = linked([a.signal, b.signal]);
  t.ok(l.signal.aborted);
  t.equal((l.signal.reason as Error).message, "before");
  t.equal(getEventListeners(b.signal, "abort").length, 0, "nothing listens on the other source");
});

t.test("done() unlinks it from its sources and stops its timer", async (t) => {
  const agent = new AbortController();
  for (let i = 0; i < 1000; i++) {
    const l = linked([agent.signal], 60_000);
    l.done();
  }
  t.equal(getEventListeners(agent.signal, "abort").length, 0, "a thousand operations leave no listener on the long-lived signal");
  const l = linked([agent.signal], 20);
  l.done();
  await sleep(60);
  t.notOk(l.signal.aborted, "the timeout does not fire after done()");
  agent.abort(new Error("agent stopped"));
  t.notOk(l.signal.aborted, "nor does a source's abort");
});

t.test("times out with a TimeoutError, as AbortSignal.timeout", async (t) => {
  const a = new AbortController();
  const l = linked([a.signal], 20);
  // Its timer does not hold the process open (sleep does, meanwhile).
  await Promise.all([t.rejects(abortable(new Promise(() => {}), l.signal), { name: "TimeoutError" }), sleep(60)]);
  t.equal(getEventListeners(a.signal, "abort").length, 0, "the timeout unlinked it from its source");
});

t.test("withLinked unlinks once the operation has settled, whether it worked or failed", async (t) => {
  const agent = new AbortController();
  t.equal(await withLinked([agent.signal], async (s) => (s.aborted ? "aborted" : "ran")), "ran");
  await t.rejects(
    withLinked([agent.signal], async () => {
      throw new Error("failed");
    }),
    { message: "failed" },
  );
  t.equal(getEventListeners(agent.signal, "abort").length, 0, "no listener left on the long-lived signal");
});
