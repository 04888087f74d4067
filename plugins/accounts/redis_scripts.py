"""The Lua scripts of the Redis counters: each one check-and-change, atomic, one round trip.

Numbers cross the Lua boundary as strings where they may be fractional (Redis
turns a Lua number reply into an integer). Money is integers (micro-USD; a
Lua number holds integers exactly up to 2**53, i.e. $9 billion). Times of
holds and slots are Redis's own clock (``TIME``), so instances on machines
whose clocks differ agree on when a hold has expired; GCRA times are the
caller's (``time.time()``, NTP-synchronised machines).
"""

from __future__ import annotations

# A rule's state (its TAT key, ``<prefix>rl2:...``): the text "<at> <debt>", the caller's time
# of its last take and how many seconds past it its TAT lies (``gcra.Tat``: never the sum,
# which a float at Unix times resolves only to ~2.4e-7 s). ``rl2``: the keys of instances that
# kept the sum (``rl:``) are never read as this.

# Correct tokens rules (the real usage minus the estimate taken). KEYS: TAT keys (one may
# come several times: several requests' corrections in one call); ARGV: per key, the shift
# in seconds. The key's time to live moves with its TAT (no clock needed).
ADJUST = """
for i = 1, #KEYS do
  local tat = redis.call('GET', KEYS[i])
  if tat then
    local at, debt = string.match(tat, '^(%S+) (%S+)$')
    local shift = tonumber(ARGV[i])
    local ttl = redis.call('PTTL', KEYS[i]) + math.floor(shift * 1000)
    if ttl > 0 then
      redis.call('SET', KEYS[i], at .. ' ' .. string.format('%.17g', tonumber(debt) + shift), 'PX', ttl)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 1
"""

# Server time in milliseconds (shared prelude).
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# An account's holds: a sorted set, member "<hold id>|<amount>", score its expiry (ms). Expired
# holds (their instance died) are dropped, and their amount freed, by whichever script next
# touches the account.
_FREE_EXPIRED_HOLDS = """
local function free_expired_holds(acct, holds)
  local dead = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #dead > 0 then
    local freed = 0
    for _, member in ipairs(dead) do freed = freed + tonumber(string.match(member, '|(%d+)$')) end
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
    redis.call('HINCRBY', acct, 'res', -freed)
  end
end
"""

# A budget's total: a hash {used, held} (``held``: the sum of its live holds); its holds: a sorted
# set like an account's (member "<hold id>|<amount>", score its expiry, kept alive by the instance
# that took it), and the holds that expired before their settle came: a sorted set (score: when),
# where a late settle finds its own and counts its spend (a settle finds its hold in neither only
# when it ran before: a settle sent again counts once). Both sets live as long as the total.
_FREE_EXPIRED_TOTAL = """
local function free_expired_total(h, z, gone)
  local dead = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #dead > 0 then
    local freed = 0
    for _, member in ipairs(dead) do
      freed = freed + tonumber(string.match(member, '|(%d+)$'))
      redis.call('ZADD', gone, now, member)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    if redis.call('HINCRBY', h, 'held', -freed) < 0 then redis.call('HSET', h, 'held', 0) end
    local ttl = redis.call('PTTL', h)
    if ttl > 0 then redis.call('PEXPIRE', gone, ttl) end
  end
end
"""

# One request's whole admission (``claims.py``): every claim checked in order, then all
# taken, or none. ARGV: ttl ms (slots and holds), the number of claims, then per claim its
# kind and arguments; KEYS: per claim its keys, in the same order.
#   S  slot         KEYS: the scope's sorted set (member: slot id, score: expiry ms); ARGV: limit, slot id
#   R  rate limits  KEYS: one TAT key per rule ("<at> <debt>", see above); ARGV: now (caller's clock),
#                   tokens, rules, then per rule: interval, period, is_tokens (1/0)
#   C  credit       KEYS: account, holds (see _ACCOUNT); ARGV: seed balance, seed version, amount, member
#   T  capped total KEYS: its hash (used, held), its holds, its expired holds (see _FREE_EXPIRED_TOTAL);
#                   ARGV: cap, amount, seed (used when new; '' for "ask me": a fresh read of the
#                   store), expire-at (unix s; 0 never), the hold's member "<hold id>|<amount>" ('':
#                   an amount of 0, nothing held)
# Reply: {status, claim index, results}: status 1 all taken (index 0), 0 the claim at index
# refused and nothing was taken, -1 the claim at index (credit, or a total sent without a
# seed) names something Redis does not have (the caller reads the store and runs it again
# with the seed; nothing was taken). results, one per claim
# up to the refused one: S {}; R {worst rule (1-based) or 0, wait, the state of each rule
# (after the take, or as it is when refused; '' for none)} (strings); C {bal, res}; T {used}.
ADMIT = _NOW_MS + _FREE_EXPIRED_HOLDS + _FREE_EXPIRED_TOTAL + """
local ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local a, k = 3, 1
local todo, out = {}, {}
for c = 1, n do
  local kind = ARGV[a]
  if kind == 'S' then
    local z = KEYS[k]
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    out[c] = {}
    if redis.call('ZCARD', z) >= tonumber(ARGV[a + 1]) then return {0, c, out} end
    todo[c] = {z, ARGV[a + 2]}
    a, k = a + 3, k + 1
  elseif kind == 'R' then
    local at, tokens, m = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local new, r = {}, {'0', '0'}
    local worst, worst_wait = 0, 1e-9
    for i = 1, m do
      local b = a + 1 + 3 * i
      local cost = 1
      if ARGV[b + 2] == '1' then cost = tokens end
      local raw = redis.call('GET', KEYS[k + i - 1])
      r[2 + i] = raw or ''
      local debt = 0  -- seconds the TAT lies past now (GCRA's max(TAT, now))
      if raw then
        local was, owed = string.match(raw, '^(%S+) (%S+)$')
        debt = tonumber(owed) - (at - tonumber(was))
        if debt < 0 then debt = 0 end
      end
      debt = debt + cost * tonumber(ARGV[b])
      local over = debt - tonumber(ARGV[b + 1])
      if over > worst_wait then worst, worst_wait = i, over end
      new[i] = debt
    end
    out[c] = r
    if worst ~= 0 then
      r[1] = tostring(worst); r[2] = string.format('%.17g', worst_wait)
      return {0, c, out}
    end
    todo[c] = {k, m, new}
    a, k = a + 4 + 3 * m, k + m
  elseif kind == 'C' then
    local acct, holds = KEYS[k], KEYS[k + 1]
    if redis.call('EXISTS', acct) == 0 then
      out[c] = {}
      if ARGV[a + 1] == '' then return {-1, c, out} end
      redis.call('HSET', acct, 'bal', ARGV[a + 1], 'res', 0, 'ver', ARGV[a + 2])
    end
    free_expired_holds(acct, holds)
    local bal = tonumber(redis.call('HGET', acct, 'bal'))
    local res = tonumber(redis.call('HGET', acct, 'res'))
    local amount = tonumber(ARGV[a + 3])
    out[c] = {bal, res}
    if bal - res < amount then return {0, c, out} end
    todo[c] = {acct, holds, ARGV[a + 3], ARGV[a + 4], bal}
    a, k = a + 5, k + 2
  elseif kind == 'T' then
    local h = KEYS[k]
    if redis.call('EXISTS', h) == 0 then
      if ARGV[a + 3] == '' then out[c] = {0}; return {-1, c, out} end
      redis.call('HSET', h, 'used', ARGV[a + 3], 'held', 0)
      if tonumber(ARGV[a + 4]) > 0 then redis.call('EXPIREAT', h, math.ceil(tonumber(ARGV[a + 4]))) end
    end
    free_expired_total(h, KEYS[k + 1], KEYS[k + 2])
    local used = tonumber(redis.call('HGET', h, 'used'))
    out[c] = {used}
    if used + tonumber(redis.call('HGET', h, 'held')) + tonumber(ARGV[a + 2]) > tonumber(ARGV[a + 1]) then
      return {0, c, out}
    end
    todo[c] = {h, ARGV[a + 2], KEYS[k + 1], ARGV[a + 5], tonumber(ARGV[a + 4])}
    a, k = a + 6, k + 3
  else
    return redis.error_reply('ADMIT: unknown claim kind ' .. tostring(kind))
  end
end
a = 3
for c = 1, n do
  local kind, d = ARGV[a], todo[c]
  if kind == 'S' then
    redis.call('ZADD', d[1], now + ttl, d[2])
    redis.call('PEXPIRE', d[1], ttl * 2)
    a = a + 3
  elseif kind == 'R' then
    local r = out[c]
    local at = ARGV[a + 1]  -- (the caller's text: the same number, exactly)
    for i = 1, d[2] do
      local debt = d[3][i]
      local text = at .. ' ' .. string.format('%.17g', debt)
      redis.call('SET', KEYS[d[1] + i - 1], text, 'PX', math.ceil(debt * 1000) + 1000)
      r[2 + i] = text
    end
    a = a + 4 + 3 * d[2]
  elseif kind == 'C' then
    redis.call('ZADD', d[2], now + ttl, d[4])
    out[c] = {d[5], redis.call('HINCRBY', d[1], 'res', d[3])}
    a = a + 5
  else
    redis.call('HINCRBY', d[1], 'held', d[2])
    if d[4] ~= '' then
      redis.call('ZADD', d[3], now + ttl, d[4])
      if d[5] > 0 and redis.call('PTTL', d[3]) < 0 then redis.call('EXPIREAT', d[3], math.ceil(d[5])) end
    end
    a = a + 6
  end
end
return {1, 0, out}
"""

# Keep this instance's slots and holds alive. KEYS: sorted sets; ARGV: ttl ms, then per key
# the number of members, then the members. Only members still there are refreshed (XX). A set
# that expires (a scope's slots: ``2 * ttl``) lives on; one that does not (an account's holds)
# or lives longer (a total's holds: as long as the total) keeps its time to live: a set of
# holds that expired whole took its members' amounts with it, and the sum it kept of them
# (``res``, ``held``) stayed for good.
REFRESH = _NOW_MS + """
local ttl = tonumber(ARGV[1])
local at = 2
for i = 1, #KEYS do
  local count = tonumber(ARGV[at]); at = at + 1
  for j = 1, count do
    redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[at]); at = at + 1
  end
  local left = redis.call('PTTL', KEYS[i])
  if left > 0 and left < ttl * 2 then redis.call('PEXPIRE', KEYS[i], ttl * 2) end
end
return 1
"""

# A request's budgets settled (or released: spent 0), all in one script. KEYS: per total its
# hash, holds and expired holds (see _FREE_EXPIRED_TOTAL). ARGV: spent, then the request's hold
# members (one per admission that held: two after a grown hold; none: a charge that held nothing,
# a recovered batch line's, whose spend counts as it is). Each member is freed where it is (the
# holds, expired or not, or the expired holds: the admissions move those, and free what they
# held); the spend counts in a total where one of them was found: a settle sent again (its first
# reply lost) finds none and changes nothing. Reply: per total its used after, or -1 when Redis
# does not have it (it lost its data: not made again here). ``settle_totals(k, a, spent)``: the
# same over KEYS from k and ARGV from a (SETTLE runs it after its charge, in the same script).
_SETTLE_TOTALS = """
local function settle_totals(k0, a0, spent)
  local out = {}
  for i = k0, #KEYS, 3 do
    local h, z, gone = KEYS[i], KEYS[i + 1], KEYS[i + 2]
    if redis.call('EXISTS', h) == 0 then
      out[#out + 1] = -1
    else
      local found = #ARGV < a0
      for j = a0, #ARGV do
        if redis.call('ZREM', z, ARGV[j]) == 1 then
          local amount = tonumber(string.match(ARGV[j], '|(%d+)$'))
          if redis.call('HINCRBY', h, 'held', -amount) < 0 then redis.call('HSET', h, 'held', 0) end
          found = true
        elseif redis.call('ZREM', gone, ARGV[j]) == 1 then
          found = true
        end
      end
      if found and spent ~= 0 then
        out[#out + 1] = redis.call('HINCRBY', h, 'used', spent)
      else
        out[#out + 1] = tonumber(redis.call('HGET', h, 'used'))
      end
    end
  end
  return out
end
"""
SETTLE_TOTALS = _SETTLE_TOTALS + """
return settle_totals(1, 2, tonumber(ARGV[1]))
"""

# KEYS: totals' hashes. Reply: each one's used, or -1 for a total Redis does not have.
READ_TOTALS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = tonumber(redis.call('HGET', key, 'used') or -1) end
return out
"""


# -- credit ---------------------------------------------------------------------------------
# An account: hash {bal (what the fleet may still spend), res (sum of live holds), ver (the
# store version its balance was read at), unl}; its holds: see _FREE_EXPIRED_HOLDS. An
# account not in Redis is seeded from a fresh read of the store (ARGV 1 and 2: its balance
# and the version it was read at), never from an instance's memory, which may be older than
# charges stored since.
_ACCOUNT = _NOW_MS + _FREE_EXPIRED_HOLDS + """
local acct, holds = KEYS[1], KEYS[2]
if redis.call('EXISTS', acct) == 0 then
  if ARGV[1] == '' then return {-1, 0, 0} end  -- not in Redis: the caller reads the store and seeds it
  redis.call('HSET', acct, 'bal', ARGV[1], 'res', 0, 'ver', ARGV[2])
end
free_expired_holds(acct, holds)
"""

# Read an account (dropping its expired holds first). KEYS: account, holds. Reply: {bal, res} or {}.
LIVE = _NOW_MS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  local freed = 0
  for _, m in ipairs(dead) do freed = freed + tonumber(string.match(m, '|(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('HINCRBY', KEYS[1], 'res', -freed)
end
return redis.call('HMGET', KEYS[1], 'bal', 'res')
"""

# Grow a hold (a retry on a dearer route): swap the member for one of the bigger amount if
# the account has the difference free; a hold that expired meanwhile needs the whole amount.
# KEYS: account, holds. ARGV: seed balance, seed version, old member, old amount, new member,
# new amount, ttl ms. Reply: {1 grown / 0 not enough (the old hold stays), bal, res}.
GROW = _ACCOUNT + """
local bal = tonumber(redis.call('HGET', acct, 'bal'))
local res = tonumber(redis.call('HGET', acct, 'res'))
local still = redis.call('ZSCORE', holds, ARGV[3])
local need = tonumber(ARGV[6])
if still then need = need - tonumber(ARGV[4]) end
if bal - res < need then return {0, bal, res} end
if still then redis.call('ZREM', holds, ARGV[3]) end
redis.call('ZADD', holds, now + tonumber(ARGV[7]), ARGV[5])
return {1, bal, redis.call('HINCRBY', acct, 'res', need)}
"""

MARKER_BACKSTOP_S = 7 * 86400  # a done marker whose entry no writer stored (see SETTLE)
MARKER_AFTER_STORED_S = 600  # a done marker once its entry is stored: for a retried SETTLE

# Settle: free the hold, charge min(cost, what the account has), and queue the ledger row,
# all at once (so a charge is never without its row, and the row survives this process); and
# the request's budgets with the charge as their spend (``settle_totals``, above: one script and
# one reply per request where there were two; the totals' keys and holds, when it has budgets).
# KEYS: account, holds, ledger stream, the done marker (the row's id, else the hold's), then per
# budget its total's three keys. ARGV: seed balance, seed version, member, held, cost, row
# (JSON), account id, then the budgets' hold members. Reply: {charge, bal, res, 1 if the hold
# was still there (0: it had expired, and the charge took what was free), per budget its used
# after or -1 (see SETTLE_TOTALS)}; an account Redis does not have: {-1, 0, 0}, nothing done.
# A retry (the reply of the first try was lost), or another charge of the same row (a batch
# line run twice), finds the marker and charges nothing: it only frees its own holds (its
# budgets' too, spending nothing: a first run counted the charge). The marker
# lives until a writer has stored the stream's entry (the entry names it, ``done``), then
# ``MARKER_AFTER_STORED_S`` (``redis_credit.SharedCredit.done``); its own time to live is only a
# backstop for an entry no writer of this version stores (``redis_owed.py`` says why).
SETTLE = _ACCOUNT + _SETTLE_TOTALS + """
local before = redis.call('GET', KEYS[4])
if before then
  if redis.call('ZREM', holds, ARGV[3]) == 1 then redis.call('HINCRBY', acct, 'res', -tonumber(ARGV[4])) end
  return {tonumber(before), tonumber(redis.call('HGET', acct, 'bal')), tonumber(redis.call('HGET', acct, 'res')), 1,
          settle_totals(5, 8, 0)}
end
local held = tonumber(ARGV[4])
local found = redis.call('ZREM', holds, ARGV[3])
if found == 1 then redis.call('HINCRBY', acct, 'res', -held) end
local bal = tonumber(redis.call('HGET', acct, 'bal'))
local res = tonumber(redis.call('HGET', acct, 'res'))
local charge = tonumber(ARGV[5])
if charge > bal - res then charge = bal - res end
if charge < 0 then charge = 0 end
if charge > 0 then bal = redis.call('HINCRBY', acct, 'bal', -charge) end
redis.call('XADD', KEYS[3], '*', 'row', ARGV[6], 'acct', ARGV[7], 'charge', charge, 'unl', '0', 'done', KEYS[4])
redis.call('SET', KEYS[4], charge, 'EX', """ + str(MARKER_BACKSTOP_S) + """)
return {charge, bal, res, found, settle_totals(5, 8, charge)}
"""

# Entries of the ledger stream a writer has stored (or set aside): acknowledged and deleted, and
# their SETTLEs' done markers expire ARGV[3] seconds from now, in one command (the writer's
# step sent one command per marker, packed and parsed by redis-py: a few microseconds a row).
# KEYS: the stream, then the markers. ARGV: the group, the number of entry ids, the markers'
# time to live, then the ids.
STREAM_DONE = """
local n = tonumber(ARGV[2])
for i = 4, 3 + n, 500 do
  local last = math.min(i + 499, 3 + n)
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, last))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, last))
end
for i = 2, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return n
"""

# An unmetered account's charge (spent only) with its row. KEYS: stream. ARGV: row, account, charge.
LOG_UNLIMITED = """
redis.call('XADD', KEYS[1], '*', 'row', ARGV[1], 'acct', ARGV[2], 'charge', ARGV[3], 'unl', '1')
return 1
"""

# Release a hold. KEYS: account, holds. ARGV: member, amount.
RELEASE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'res', -tonumber(ARGV[2])) end
return 1
"""

# A top-up (or any credit added in the store at version ver). KEYS: account, applied set.
# ARGV: amount, ver, the balance read back in the top-up's transaction. An account not in
# Redis yet is seeded with that balance (it includes the top-up); one seeded at or after
# ver already has it; else the amount is added, once per version.
TOPUP = """
local ver = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'bal', ARGV[3], 'res', 0, 'ver', ver)
  return 1
end
if tonumber(redis.call('HGET', KEYS[1], 'ver')) >= ver then return 0 end
if redis.call('SADD', KEYS[2], ver) == 0 then return 0 end
redis.call('EXPIRE', KEYS[2], 86400)
redis.call('HINCRBY', KEYS[1], 'bal', ARGV[1])
return 1
"""


def tat_of_text(text: bytes) -> tuple[float, float]:
    """A rule's state as Redis keeps it ("<at> <debt>") as a ``gcra.Tat``."""
    at, _, debt = text.partition(b" ")
    return float(at), float(debt)
