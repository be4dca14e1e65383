"""Calls the OSM vehicle service the way a partner's toolkit does: zeep loads the served WSDL
and generates the call. Usage: call_sync_vehicles.py <service url> [text|digest|wrong].
Prints one JSON line with what zeep returned (or the Fault it raised)."""
import datetime
import json
import sys

from zeep import Client
from zeep.exceptions import Fault
from zeep.wsse.username import UsernameToken

url, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "text")
password = "wrong" if mode == "wrong" else "demo-osm"
client = Client(url + "?wsdl", wsse=UsernameToken("osm", password, use_digest=(mode == "digest")))
vehicles = [
    {
        "vin": "LHG0LVF20VB714970", "brand": "Honda", "model": "雅阁 Accord", "modelYear": 2026,
        "color": "珍珠白", "plateNo": "粤A·D12345", "engineNo": "L15B7714970",
        "dealerCode": "D0001", "salesDate": datetime.date(2026, 11, 20),
        "owner": {"name": "陈大文", "mobile": "+86 138-0013-8000", "idNo": "440106198503021236"},
    },
    # Optional elements left out, as generated clients do.
    {"vin": "LHGHL1LV0VD172367", "dealerCode": "D0002", "owner": {"name": "林小红"}},
]
try:
    res = client.service.SyncVehicles(vehicle=vehicles)
    print(json.dumps({
        "messageId": res.messageId,
        "accepted": res.accepted,
        "rejected": [{"vin": r.vin, "reason": r.reason} for r in (res.rejected or [])],
    }, ensure_ascii=False))
except Fault as f:
    print(json.dumps({"fault": f.message, "code": f.code}, ensure_ascii=False))
