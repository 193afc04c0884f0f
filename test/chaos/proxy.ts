// The registry proxy of the chaos suite, run as a child process inside the
// registry's network namespace (where the registry's address is reachable):
// `tsx test/chaos/proxy.ts TARGET LISTEN`. Driven over the IPC channel:
//   {id, op: "fault", fault}      one-shot fault (see ProxyFault)
//   {id, op: "stats", digests}    → {id, served, perBlob: {digest: bytes}}
//   {id, op: "clear"}             → {id, cleared}: drops faults not yet fired
// and answers {id} when done. Prints "ready HOST" once it listens.

import { type ProxyFault, startProxy } from "../helpers/registry.js";

const [target, listen] = process.argv.slice(2) as [string, string];
const proxy = await startProxy(target, { listen });
/** Times leave this process on the wall clock (ms since the epoch), which the runner shares. */
const epoch = (t: number | undefined): number | undefined => (t === undefined ? undefined : performance.timeOrigin + t);
type Msg = { id: number; op: "fault"; fault: ProxyFault } | { id: number; op: "stats"; digests: string[] } | { id: number; op: "clear" };

process.on("message", (m: Msg) => {
  if (m.op === "fault") {
    proxy.injectFault(m.fault);
    process.send!({ id: m.id });
  } else if (m.op === "clear") {
    process.send!({ id: m.id, cleared: proxy.clearFaults() });
  } else if (m.op === "stats") {
    const gets = proxy.requests().filter((r) => r.method === "GET");
    const requests = Object.fromEntries(
      m.digests.map((d) => [d, gets.filter((r) => r.url.includes(d)).map((r) => ({ client: r.client, range: r.range, status: r.status, sent: r.sent ?? 0, start: epoch(r.start), end: epoch(r.end) }))]),
    );
    process.send!({ id: m.id, served: proxy.bytesServed(), perBlob: Object.fromEntries(m.digests.map((d) => [d, proxy.blobBytesServed(d)])), requests });
  }
});
process.on("disconnect", () => void proxy.stop().then(() => process.exit(0)));
process.stdout.write(`ready ${proxy.host}\n`);
