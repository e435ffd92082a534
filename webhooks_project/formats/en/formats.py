"""Times in the admin to the second, in the order logs and the API write them (2026-12-01
16:35:21): a delivery log read to the minute ("4:35 p.m.") hides which attempt came first."""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
