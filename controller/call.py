"""A call, as the controller (natpi) runs it: the one place that knows the order.

    place_call   checks (both Pis answer, no call up, the tunnel, natpi's address
                 against the gateway's DNAT), a fresh token and call id, gwpi's
                 side first (the listeners), then natpi's (the dialers), then
                 waits until media flows both ways; both Pis record who placed
                 it (`--by`: a Pi's inventory name, natpi's unless said)
    hang_up      senders on both Pis, then receivers on both, then both Pis'
                 call directories copied here
    site_status  what runs where, the tunnel, natpi's address against the DNAT

It reaches the Pis only through the runtime's own commands (`pi2pi up`,
`pi2pi down`, `pi2pi status`) over ssh, and reads every call setting from each
Pi's own answers, never from a copy. fabfile.py is a page of tasks over this.
"""
from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from controller import store
from controller.report import DIRECTIONS as REPORT_DIRECTIONS, PROGRAMS
from controller.remote import Connections, Remote, Say, Unreachable
from controller.site import Site

SIDES = ("natpi", "gwpi")
# The programs of a direction, by its name in a user's words ("video natpi -> gwpi"):
# (sender side, program), (receiver side, program); the pairing is report.DIRECTIONS'.
DIRECTIONS = {f"{kind} {sender} -> {receiver}": ((sender, PROGRAMS[kind][0]), (receiver, PROGRAMS[kind][1]))
              for kind, sender, receiver in REPORT_DIRECTIONS.values()}
SETUP_TIMEOUT_S = 30.0   # from the dialers' start to media both ways


class CallFailed(Exception):
    """The call could not be placed, or not stopped cleanly: the message names host and cause."""


@dataclass
class Options:
    media: str = "both"                       # both, video, audio
    size: Optional[str] = None
    fps: Optional[float] = None
    quality: Optional[int] = None
    by: Optional[str] = None                  # who places the call: a Pi's inventory name (None: natpi's)

    def up_arguments(self) -> str:
        words = ["--media", self.media]
        for flag, value in (("--size", self.size), ("--fps", self.fps), ("--quality", self.quality),
                            ("--by", self.by)):
            if value is not None:
                words += [flag, str(value)]
        return " ".join(shlex.quote(w) for w in words)


@dataclass
class Side:
    """One Pi, with what it said about itself (`pi2pi status --json`)."""

    remote: Remote
    status: Dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def call(self) -> Optional[Dict[str, Any]]:
        return self.status.get("call")

    def pi2pi(self, arguments: str, **kwargs: Any) -> Any:
        return self.remote.run(f"pi2pi {arguments}", **kwargs)

    def pi2pi_json(self, arguments: str, **kwargs: Any) -> Tuple[int, Dict[str, Any], str]:
        result = self.pi2pi(f"{arguments} --json", **kwargs)
        try:
            answer = json.loads(result.out.strip().splitlines()[-1]) if result.out.strip() else {}
        except ValueError:
            answer = {}
        return result.code, answer, re.sub(r"^pi2pi \w+: error: ", "", result.last_error())


def in_parallel(jobs: Dict[str, Callable[[], Any]]) -> Dict[str, Any]:
    """Run each job in a thread; each result, or the exception it raised."""
    results: Dict[str, Any] = {}

    def run(name: str, job: Callable[[], Any]) -> None:
        try:
            results[name] = job()
        except Exception as err:  # handed to the caller, who names the host
            results[name] = err

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


class Controller:
    def __init__(self, site: Site, say: Say) -> None:
        self.site = site
        self.say = say
        self.connections = Connections()
        self.remotes = [Remote(pi, self.connections) for pi in site.pis]

    def close(self) -> None:
        self.connections.close()

    # ----- what the Pis say -----------------------------------------------------------

    def ask_pis(self, tolerate_unreachable: bool = False) -> Dict[str, Side]:
        """Both Pis' status, keyed by side (natpi, gwpi)."""
        answers = in_parallel({r.name: (lambda r=r: r.run("pi2pi status --json", timeout=30))
                               for r in self.remotes})
        sides: Dict[str, Side] = {}
        for remote in self.remotes:
            answer = answers[remote.name]
            if isinstance(answer, Unreachable):
                if tolerate_unreachable:
                    self.say(f"{answer}")
                    continue
                raise CallFailed(str(answer))
            if isinstance(answer, Exception):
                raise CallFailed(f"{remote.host.describe()}: {answer}")
            if answer.code != 0:
                raise CallFailed(f"{remote.name}: `pi2pi status` failed: {answer.last_error()}")
            status = json.loads(answer.out)
            if status["side"] in sides:
                raise CallFailed(f"{remote.name} and {sides[status['side']].name} both say they are "
                                 f"{status['side']}: check call.side in their configs (site.yml renders it)")
            sides[status["side"]] = Side(remote, status)
        return sides

    def gateway_check(self) -> Optional[Tuple[str, List[str]]]:
        """natpi's public address as the gateway sees this machine, and the addresses its DNAT accepts."""
        gateway = self.site.gateway
        if gateway is None:
            return None
        remote = Remote(gateway, self.connections)
        result = remote.run('echo "${SSH_CONNECTION%% *}"; sudo -n iptables-save -t nat 2>/dev/null'
                            ' || cat /etc/pi2pi/iptables.rules', timeout=30)
        lines = result.out.splitlines()
        if not lines:
            raise CallFailed(f"{gateway.name}: cannot read its DNAT: {result.last_error()}")
        seen_as = lines[0].strip()
        accepted = sorted({m[1] for m in (re.match(r"^-A PI2PI-PREROUTING -s ([0-9.]+)/32 ", line)
                                          for line in lines[1:]) if m})
        return seen_as, accepted

    def check_address(self, found: Optional[Tuple[str, List[str]]]) -> None:
        """Refuse a call when natpi's public address is not the one the gateway's DNAT accepts."""
        if found is None:
            self.say("no gateway in the inventory: natpi's address against the DNAT is not checked")
            return
        seen_as, accepted = found
        if seen_as not in accepted:
            raise CallFailed(
                f"natpi's public address has drifted: the gateway {self.site.gateway.name} sees natpi as "
                f"{seen_as}, but its DNAT accepts {', '.join(accepted) or 'nothing'}: run "
                f"`ansible-playbook playbooks/natpi_address.yml` (then fab call again)")

    # ----- placing a call -------------------------------------------------------------

    def check_caller(self, by: Optional[str]) -> None:
        """Refuse a caller that is not one of the inventory's Pis (before anything is asked)."""
        names = [r.name for r in self.remotes]
        if by is not None and by not in names:
            raise CallFailed(f"--by {by}: who places a call is one of the inventory's Pis ({', '.join(names)})")

    def place_call(self, options: Options) -> Tuple[str, float]:
        """Start a call and return (call id, seconds until media flowed both ways)."""
        started = time.monotonic()
        self.check_caller(options.by)
        self.say(f"asking {' and '.join(r.host.describe() for r in self.remotes)} how they are, "
                 f"and the gateway where natpi's address stands")
        asked = in_parallel({"pis": self.ask_pis, "gateway": self.gateway_check})
        for answer in asked.values():
            if isinstance(answer, (CallFailed, Unreachable)):
                raise CallFailed(str(answer))
            if isinstance(answer, Exception):
                raise answer
        sides: Dict[str, Side] = asked["pis"]
        missing = [s for s in SIDES if s not in sides]
        if missing:
            raise CallFailed(f"no Pi says it is {', '.join(missing)}: check call.side in their configs")
        natpi, gwpi = sides["natpi"], sides["gwpi"]
        # Unless someone else is named, the call is placed from here: natpi, the controller.
        options = dataclasses.replace(options, by=options.by or natpi.name)
        for side in (gwpi, natpi):
            call = side.call
            if call is not None and call["supervisor"] == "running":
                raise CallFailed(f"a call is already up on {side.name}: {call['call']} ({call['state']}); "
                                 f"`fab hangup` first")
            if call is not None:
                self.say(f"{side.name}: call {call['call']} was left by a dead supervisor; it is cleared now")
        transport = natpi.status["transport"]
        if gwpi.status["transport"] != transport:
            raise CallFailed(f"natpi uses the {transport} transport, gwpi the {gwpi.status['transport']} one: "
                             f"re-run site.yml")
        tunnel = gwpi.status["tunnel"]
        if transport == "tunnel":
            for side in (gwpi, natpi):
                if side.status["tunnel"]["up"] is False:
                    raise CallFailed(f"the tunnel is down ({side.name}: {side.status['tunnel']['detail']}); "
                                     f"the tunnel transport carries the call in it")
        elif tunnel["up"] is False:
            self.say(f"note: the tunnel is down ({tunnel['detail']}); the direct transport does not need it")
        self.check_address(asked["gateway"])

        call_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        token = secrets.token_urlsafe(32)
        store.new_call(call_id, {"call": call_id, "media": options.media, "transport": transport,
                                 "options": options.__dict__, "hosts": {s: sides[s].name for s in SIDES},
                                 "inventory": self.site.inventory, "started": time.time()})
        up = f"up --call {call_id} --token-stdin {options.up_arguments()}"

        def start(side: Side, what: str) -> None:
            self.say(f"starting {side.name}'s side ({what})")
            code, _, error = side.pi2pi_json(up, stdin=token + "\n", timeout=60)
            if code != 0:
                raise CallFailed(f"{side.name}: {error}")

        def wait(side: Side) -> None:
            result = side.pi2pi(f"status --wait-flowing {SETUP_TIMEOUT_S:.0f}", timeout=SETUP_TIMEOUT_S + 30,
                                on_line=lambda line: self.say(f"{side.name}: {line}"))
            if result.code != 0:
                raise CallFailed(f"{side.name}: media did not arrive within {SETUP_TIMEOUT_S:.0f} s "
                                 f"({result.last_error()})")

        def dial_and_wait() -> None:
            try:
                start(natpi, "the dialers")
            except (CallFailed, Unreachable):
                gwpi.pi2pi("down")   # ends gwpi's wait at once
                raise
            wait(natpi)

        try:
            start(gwpi, "the listeners")
            # natpi's dialers start while gwpi already waits for their media.
            done = in_parallel({"natpi": dial_and_wait, "gwpi": lambda: wait(gwpi)})
            for answer in done.values():
                if isinstance(answer, Exception):
                    raise answer
        except (CallFailed, Unreachable) as err:
            self.say(f"the call failed; stopping what started ({err})")
            self.stop_sides([gwpi, natpi], call_id)
            raise CallFailed(str(err)) from None
        setup_s = round(time.monotonic() - started, 2)
        store.update(call_id, {"call_setup_s": setup_s})
        what = {"both": "video and audio", "video": "video", "audio": "audio"}[options.media]
        self.say(f"call {call_id} is up: {what} both ways ({transport} transport), {setup_s:.1f} s after fab call; "
                 f"placed by {options.by}")
        return call_id, setup_s

    # ----- hanging up -----------------------------------------------------------------

    def stop_sides(self, sides: List[Side], call_id: Optional[str]) -> Dict[str, Any]:
        """Senders on every side, then receivers on every side, then fetch; what each side said."""
        in_parallel({s.name: (lambda s=s: s.pi2pi_json("down --senders", timeout=30)) for s in sides})
        downs = in_parallel({s.name: (lambda s=s: s.pi2pi_json("down", timeout=60)) for s in sides})
        report: Dict[str, Any] = {}
        for side in sides:
            answer = downs[side.name]
            if isinstance(answer, Exception):
                report[side.name] = {"error": str(answer)}
                continue
            code, said, error = answer
            if code != 0 or not said:
                report[side.name] = {"error": error}
                continue
            report[side.name] = said
            if said.get("call") and (call_id is None or said["call"] == call_id):
                try:
                    said["fetched"] = side.remote.fetch_dir(said["dir"], store.side_dir(said["call"], side.name))
                except Unreachable as err:
                    said["error"] = str(err)
        return report

    def hang_up(self) -> Optional[str]:
        """Stop the call on both Pis (or whichever answers) and fetch its stats; the call id."""
        started = time.monotonic()
        sides = self.ask_pis(tolerate_unreachable=True)
        with_call = [s for s in sides.values() if s.call is not None]
        if not with_call:
            unreachable = [r.name for r in self.remotes if r.name not in {s.name for s in sides.values()}]
            self.say("no call is up" + (f" on {', '.join(s.name for s in sides.values())}" if unreachable else ""))
            return None
        ids = {s.call["call"] for s in with_call}
        call_id = sorted(ids)[-1]
        self.say(f"hanging up call {call_id}: senders first, then receivers, on {', '.join(s.name for s in with_call)}")
        report = self.stop_sides(with_call, None)
        hangup_s = round(time.monotonic() - started, 2)
        for side in with_call:
            said = report[side.name]
            if "error" in said:
                self.say(f"{side.name}: {said['error']}")
            else:
                missing = said.get("missing") or []
                self.say(f"{side.name}: ended by {said.get('ended_by')}; "
                         + (f"missing: {', '.join(missing)}" if missing else "all stats fetched"))
        for name in {r.name for r in self.remotes} - {s.name for s in sides.values()}:
            self.say(f"{name}: not reached: its side was not stopped and its stats are not here")
        if store.exists(call_id):
            store.update(call_id, {"hangup_s": hangup_s, "hung_up": time.time()})
        else:   # a call this controller did not place (or whose record is gone)
            store.new_call(call_id, {"call": call_id, "hangup_s": hangup_s, "hung_up": time.time()})
        self.say(f"call {call_id} ended; stats in {store.call_dir(call_id)} ({hangup_s:.1f} s)")
        return call_id

    # ----- status -------------------------------------------------------------------

    def site_status(self) -> Dict[str, Any]:
        sides = self.ask_pis(tolerate_unreachable=True)
        report: Dict[str, Any] = {"inventory": self.site.inventory,
                                  "pis": {s.name: {"side": k, **s.status} for k, s in sides.items()},
                                  "media": media_state({k: s.call for k, s in sides.items()},
                                                       {k: s.name for k, s in sides.items()})}
        try:
            found = self.gateway_check()
        except (CallFailed, Unreachable) as err:
            report["address"] = {"error": str(err)}
        else:
            if found is not None:
                seen_as, accepted = found
                report["address"] = {"natpi_seen_as": seen_as, "dnat_accepts": accepted,
                                     "in_step": seen_as in accepted}
        return report


def media_state(calls: Dict[str, Optional[Dict[str, Any]]], names: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Each direction of the call as both ends see it now (from each side's `pi2pi status`).

    A direction is up when its sender and its receiver both run and are connected
    to a peer; otherwise it is down, and `why` names each end that is not: ended
    (how), gone with its supervisor, or dialing/listening again. A side without a
    call, or not reached, is named too. Directions neither side runs are left out.
    """
    found: Dict[str, Dict[str, Any]] = {}
    for direction, ends in DIRECTIONS.items():
        if not any((calls.get(side) or {}).get("programs", {}).get(program) for side, program in ends):
            continue   # not part of this call (video-only, audio-only) or no call at all
        why: List[str] = []
        for side, program in ends:
            host = names.get(side, side)
            if side not in calls:
                why.append(f"{side} not reached")
                continue
            call = calls[side]
            p = (call or {}).get("programs", {}).get(program)
            if call is None:
                why.append(f"{host} has no call up")
            elif call.get("supervisor") != "running":
                why.append(f"{host}'s supervisor is gone")
            elif p is None:
                why.append(f"{host}'s {program} is not part of its call")
            elif not p.get("running"):
                why.append(f"{host}'s {program} {p.get('state')}"
                           + (f" ({p['error']})" if p.get("error") else ""))
            elif not str(p.get("state", "")).startswith("connected"):
                why.append(f"{host}'s {program} is {p.get('state')}")
        reconnects = sum(int(((calls.get(side) or {}).get("programs", {}).get(program) or {}).get("reconnects") or 0)
                         for side, program in ends)
        found[direction] = {"up": not why, "why": why, "reconnects": reconnects}
    return found
