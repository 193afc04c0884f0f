/**
 * The Node flags every agent runs with; whatever starts an agent passes
 * them (deploy/systemd/wharf-agent-run.sh spells them out too, in NODE_OPTIONS).
 *
 * --max-semi-space-size=32 (MB; V8's default here is 16): V8 sizes the
 * agent's heap more generously, and fewer full mark-compacts run (traced
 * over an agent's life up to the end of a pull: 2-3 instead of 3-4; the
 * concurrent marking was the largest single item of the agents' CPU in a
 * 10-host pull). In 11 interleaved pairs of such pulls of a 50 MB image,
 * the agents used 0.86 CPU-second less on average, and the slowest host
 * finished sooner in 10 (4.54 s against 4.76 s on average). Peak memory of
 * an agent went from about 166 to 180 MB.
 */
export const AGENT_NODE_FLAGS: readonly string[] = ["--max-semi-space-size=32"];
