"""Lua that dates what a script does by Redis's own clock, in rq's format.

A take sent behind a blocking wait runs when a job lands, maybe a second after it was sent, so
it cannot carry its start time from the worker: the script reads Redis `TIME` and formats it
as rq's `utcformat` does (`%Y-%m-%dT%H:%M:%S.%fZ`).  Lua in Redis has no date library, so the
civil date comes from the day count (H. Hinnant's days-to-civil algorithm).
"""

#: `utc_iso(seconds, microseconds)` -> "YYYY-MM-DDTHH:MM:SS.ffffffZ", to prefix a script with.
UTC_ISO = """
local function utc_iso(s, us)  -- rq's utcformat: %Y-%m-%dT%H:%M:%S.%fZ (days to civil date)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%06dZ', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60, us)
end
"""
