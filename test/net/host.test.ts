// The libp2p host: Raft messages on one stream per peer, gossip hints, the
// cluster secret, and the wire codec on hostile input.

import t from "tap";
import { MalformedMessageError, decodeMessage, encodeMessage } from "../../net/codec.js";
import { Host, newIdentity } from "../../net/host.js";
import type { Message } from "../../raft/index.js";

const quiet = { info() {}, warn() {} };
const start = async (secret: string): Promise<Host> =>
  Host.start({ identity: await newIdentity(), listen: ["/ip4/127.0.0.1/tcp/0"], secret, log: quiet });

t.test("codec round-trips every field and refuses malformed frames", async (t) => {
  const m: Message = {
    type: "app",
    from: "a",
    to: "b",
    term: 3,
    logTerm: 2,
    index: 7,
    commit: 6,
    entries: [{ term: 3, index: 8, type: "conf", data: new Uint8Array([1, 2, 255]) }],
  };
  t.same(decodeMessage(encodeMessage(m)), m);
  const snap: Message = {
    type: "snap",
    from: "a",
    to: "b",
    term: 3,
    snapshot: { meta: { index: 9, term: 3, confState: { voters: ["a"], learners: [] } }, data: new Uint8Array([9]) },
  };
  t.same(decodeMessage(encodeMessage(snap)), snap);
  const bad = [
    "{",
    "[]",
    JSON.stringify({ ...m, entries: undefined, type: "hup" }),
    JSON.stringify({ type: "app", from: "a", to: "b", term: 1.5 }),
    JSON.stringify({ type: "app", from: "", to: "b", term: 1 }),
    JSON.stringify({ type: "app", from: "a", to: "b", term: 1, entries: [{ term: 1, index: 1, type: "normal", data: "***" }] }),
  ];
  for (const f of bad) t.throws(() => decodeMessage(new TextEncoder().encode(f)), MalformedMessageError, f);
});

t.test("messages and hints between two hosts; a host with another secret gets nothing", async (t) => {
  const a = await start("the-same-secret-0123");
  const b = await start("the-same-secret-0123");
  const x = await start("some-other-secret-99");
  t.teardown(async () => {
    await a.stop();
    await b.stop();
    await x.stop();
  });
  a.setPeerAddrs(b.id, b.addrs());
  x.setPeerAddrs(b.id, b.addrs());
  const got: Message[] = [];
  b.onMessage = (m) => got.push(m);
  for (let i = 1; i <= 100; i++) a.send({ type: "heartbeat", from: a.id, to: b.id, term: i, commit: 0 });
  x.send({ type: "heartbeat", from: x.id, to: b.id, term: 1000, commit: 0 });
  const deadline = Date.now() + 10_000;
  while (got.length < 100 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  t.same(got.map((m) => m.term), Array.from({ length: 100 }, (_, i) => i + 1), "in order, all of them");
  t.notOk(got.some((m) => m.from === x.id), "nothing from the host without the secret");

  const hints: string[] = [];
  b.onHint("wharf/test", (d) => hints.push(new TextDecoder().decode(d)));
  a.onHint("wharf/test", () => undefined);
  // The mesh forms within a heartbeat or two; hints before that are dropped.
  for (let i = 0; i < 100 && hints.length === 0; i++) {
    await a.publishHint("wharf/test", new TextEncoder().encode(`hint ${i}`));
    await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(hints.length > 0 && hints[0]!.startsWith("hint "), `hint received (${hints[0]})`);
});
