// Platforms ("linux/amd64", "linux/arm64/v8") and the matching rule used to
// pick a manifest out of an index, after containerd's platforms package.

import { WharfError } from "../errors.js";

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const COMPONENT = /^[a-z0-9_.-]+$/;

/** Parses "os/arch" or "os/arch/variant". Throws WharfError INVALID_ARGUMENT. */
export function parsePlatform(s: string): Platform {
  const parts = s.trim().toLowerCase().split("/");
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => !COMPONENT.test(p))) {
    throw new WharfError("INVALID_ARGUMENT", `invalid platform ${JSON.stringify(s)}: want os/architecture[/variant], e.g. linux/amd64 or linux/arm64/v8`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return variant !== undefined ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

/**
 * The canonical spelling of a platform: aliases resolved (x86_64 → amd64,
 * aarch64 → arm64), default variants filled in (arm64 → v8, arm → v7) and the
 * amd64 variant dropped, so that two platforms match iff their normal forms are
 * equal.
 */
export function normalisePlatform(p: Platform): Platform {
  let os = p.os.toLowerCase();
  if (os === "macos") os = "darwin";
  let arch = p.architecture.toLowerCase();
  let variant = p.variant?.toLowerCase() || undefined;
  switch (arch) {
    case "x86_64":
    case "x86-64":
    case "amd64":
      return { os, architecture: "amd64" };
    case "i386":
      arch = "386";
      variant = undefined;
      break;
    case "aarch64":
    case "arm64":
      arch = "arm64";
      if (variant === undefined || variant === "8" || variant === "v8") variant = "v8";
      break;
    case "armhf":
      arch = "arm";
      variant = "v7";
      break;
    case "armel":
      arch = "arm";
      variant = "v6";
      break;
    case "arm":
      if (variant === undefined) variant = "v7";
      else if (/^[5-8]$/.test(variant)) variant = `v${variant}`;
      break;
  }
  return variant !== undefined ? { os, architecture: arch, variant } : { os, architecture: arch };
}

export function platformMatches(want: Platform, have: Platform): boolean {
  const a = normalisePlatform(want);
  const b = normalisePlatform(have);
  return a.os === b.os && a.architecture === b.architecture && a.variant === b.variant;
}

export const DEFAULT_PLATFORM: Platform = Object.freeze({ os: "linux", architecture: "amd64" });
