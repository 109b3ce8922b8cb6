"""Translation of the `Content` proto into domain payloads. No rules here: the domain checks them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

from qrmesh.platform.errors import InvalidArgument
from qrmesh.qr.domain import payloads
from qrmesh.qr.v1 import qr_code_pb2

K = TypeVar("K")
V = TypeVar("V")

_Wifi = qr_code_pb2.WifiPayload
_VCardPhone = qr_code_pb2.VCardPayload.Phone

_WIFI_SECURITY = {
    _Wifi.SECURITY_UNSPECIFIED: payloads.WifiSecurity.UNSPECIFIED,
    _Wifi.WPA: payloads.WifiSecurity.WPA,
    _Wifi.WEP: payloads.WifiSecurity.WEP,
    _Wifi.NOPASS: payloads.WifiSecurity.NOPASS,
    _Wifi.WPA2_EAP: payloads.WifiSecurity.WPA2_EAP,
}
_PHONE_TYPES = {
    _VCardPhone.TYPE_UNSPECIFIED: payloads.VCardPhoneType.UNSPECIFIED,
    _VCardPhone.CELL: payloads.VCardPhoneType.CELL,
    _VCardPhone.WORK: payloads.VCardPhoneType.WORK,
    _VCardPhone.HOME: payloads.VCardPhoneType.HOME,
    _VCardPhone.FAX: payloads.VCardPhoneType.FAX,
}


def payload_from_proto(content: qr_code_pb2.Content) -> payloads.Payload:
    """The domain payload for a `Content` message."""
    kind = content.WhichOneof("kind")
    if kind == "url":
        return payloads.Url(url=content.url.url)
    if kind == "text":
        return payloads.Text(text=content.text.text)
    if kind == "email":
        return payloads.Email(to=content.email.to, subject=content.email.subject, body=content.email.body)
    if kind == "phone":
        return payloads.Phone(number=content.phone.number)
    if kind == "sms":
        return payloads.Sms(number=content.sms.number, message=content.sms.message)
    if kind == "wifi":
        return _wifi(content.wifi)
    if kind == "vcard":
        return _vcard(content.vcard)
    if kind == "mecard":
        return _mecard(content.mecard)
    if kind == "geo":
        geo = content.geo
        altitude = geo.altitude if geo.HasField("altitude") else None
        return payloads.Geo(latitude=geo.latitude, longitude=geo.longitude, altitude=altitude)
    if kind == "event":
        return _event(content.event)
    if kind == "epc":
        return _epc(content.epc)
    if kind == "swish":
        return _swish(content.swish)
    if kind == "bitcoin":
        btc = content.bitcoin
        return payloads.Bitcoin(address=btc.address, amount=btc.amount, label=btc.label, message=btc.message)
    if kind == "whatsapp":
        return payloads.WhatsApp(number=content.whatsapp.number, message=content.whatsapp.message)
    raise InvalidArgument.field("content", "exactly one payload kind must be set")


def _enum(table: dict[K, V], value: K, path: str) -> V:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument.field(path, f"has an unknown value ({value})") from None


def _wifi(wifi: qr_code_pb2.WifiPayload) -> payloads.Wifi:
    return payloads.Wifi(
        ssid=wifi.ssid,
        password=wifi.password,
        security=_enum(_WIFI_SECURITY, wifi.security, "content.wifi.security"),
        hidden=wifi.hidden,
        eap_method=wifi.eap_method,
        identity=wifi.identity,
        anonymous_identity=wifi.anonymous_identity,
        phase2_method=wifi.phase2_method,
    )


def _vcard(card: qr_code_pb2.VCardPayload) -> payloads.VCard:
    address = None
    if card.HasField("address"):
        a = card.address
        address = payloads.VCardAddress(
            street=a.street, city=a.city, region=a.region, postal_code=a.postal_code, country=a.country
        )
    phones = tuple(
        payloads.VCardPhone(
            number=phone.number, type=_enum(_PHONE_TYPES, phone.type, f"content.vcard.phones[{index}].type")
        )
        for index, phone in enumerate(card.phones)
    )
    return payloads.VCard(
        version=card.version,
        first_name=card.first_name,
        last_name=card.last_name,
        organization=card.organization,
        title=card.title,
        phones=phones,
        emails=tuple(card.emails),
        urls=tuple(card.urls),
        address=address,
        note=card.note,
        birthday=card.birthday,
    )


def _mecard(card: qr_code_pb2.MeCardPayload) -> payloads.MeCard:
    return payloads.MeCard(
        name=card.name,
        reading=card.reading,
        phones=tuple(card.phones),
        emails=tuple(card.emails),
        url=card.url,
        address=card.address,
        note=card.note,
        birthday=card.birthday,
        nickname=card.nickname,
    )


def _utc(stamp: timestamp_pb2.Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _event(event: qr_code_pb2.EventPayload) -> payloads.Event:
    return payloads.Event(
        summary=event.summary,
        start=_utc(event.start),
        end=_utc(event.end) if event.HasField("end") else None,
        location=event.location,
        description=event.description,
        all_day=event.all_day,
        time_zone=event.time_zone,
    )


def _epc(epc: qr_code_pb2.EpcPayload) -> payloads.Epc:
    return payloads.Epc(
        name=epc.name,
        iban=epc.iban,
        bic=epc.bic,
        amount=epc.amount,
        purpose=epc.purpose,
        reference=epc.reference,
        text=epc.text,
        information=epc.information,
    )


def _swish(swish: qr_code_pb2.SwishPayload) -> payloads.Swish:
    editable = payloads.SwishEditable()
    if swish.HasField("editable"):
        e = swish.editable
        editable = payloads.SwishEditable(payee=e.payee, amount=e.amount, message=e.message)
    return payloads.Swish(payee=swish.payee, amount=swish.amount, message=swish.message, editable=editable)
