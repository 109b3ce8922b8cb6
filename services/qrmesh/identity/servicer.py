"""The identity service's gRPC servicers: protos to `Identity` calls and back. No rules here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from qrmesh.auth.v1 import policy_pb2
from qrmesh.identity import names, store
from qrmesh.identity.domain.emails import is_email
from qrmesh.identity.domain.roles import MemberRole
from qrmesh.identity.service import Identity, SessionTokens, utcnow
from qrmesh.identity.v1 import identity_pb2, identity_service_pb2, identity_service_pb2_grpc
from qrmesh.platform import ratelimit
from qrmesh.platform.auth import Principal, current_principal
from qrmesh.platform.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from qrmesh.platform.ratelimit import CLIENT_IP_HEADER

Context = grpc.aio.ServicerContext[Any, Any]
svc = identity_service_pb2


def _timestamp(moment: datetime | None) -> timestamp_pb2.Timestamp | None:
    if moment is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def _role_to_proto(role: str | None) -> policy_pb2.Role.ValueType:
    return policy_pb2.Role.Value(role) if role else policy_pb2.ROLE_UNSPECIFIED


def _role_from_proto(role: policy_pb2.Role.ValueType, *, field: str) -> MemberRole:
    if role == policy_pb2.ROLE_UNSPECIFIED:
        raise InvalidArgument.field(field, "must be one of OWNER, ADMIN, EDITOR, VIEWER")
    return MemberRole(policy_pb2.Role.Name(role))


def _caller(principal: Principal) -> str:
    """The caller's user id; only users may call user RPCs."""
    if principal.user is None:
        raise PermissionDenied("only a signed-in user may do this", reason="USER_REQUIRED")
    return names.user_id(principal.user, field="principal")


def _actor_role(principal: Principal) -> MemberRole:
    """The caller's role in the organization the request is scoped to."""
    if principal.role is None:
        raise PermissionDenied("only members of the organization may do this")
    return MemberRole(principal.role.name)


def _organization(principal: Principal, name: str, *, field: str) -> str:
    """The organization id in `name`, which must be the one the caller was let into."""
    organization = names.organization_id(name, field=field)
    if principal.organization != names.organization_name(organization):
        raise PermissionDenied("the request is not scoped to this organization")
    return organization


def _child(principal: Principal, name: str, collection: str, *, field: str) -> tuple[str, str]:
    """(organization id, child id) from `organizations/{id}/{collection}/{id}`, checked against the caller's scope."""
    organization, child = names.parse(name, f"organizations/{{}}/{collection}/{{}}", field=field)
    if principal.organization != names.organization_name(organization):
        raise PermissionDenied("the request is not scoped to this organization")
    return organization, child


def user_to_proto(user: store.UserRecord) -> identity_pb2.User:
    """The API's view of a user."""
    return identity_pb2.User(
        name=names.user_name(user.id),
        email=user.email,
        display_name=user.display_name,
        email_verified=user.email_verified,
        create_time=_timestamp(user.created_at),
    )


def session_to_proto(session: SessionTokens) -> identity_pb2.Session:
    """The API's view of a session."""
    return identity_pb2.Session(
        access_token=session.access_token,
        access_token_expire_time=_timestamp(session.access_token_expires_at),
        refresh_token=session.refresh_token,
        refresh_token_expire_time=_timestamp(session.refresh_token_expires_at),
        token_type="Bearer",  # noqa: S106 - the token type, not a secret
        user=user_to_proto(session.user),
    )


def organization_to_proto(organization: store.OrganizationRecord) -> identity_pb2.Organization:
    """The API's view of an organization."""
    return identity_pb2.Organization(
        name=names.organization_name(organization.id),
        display_name=organization.display_name,
        create_time=_timestamp(organization.created_at),
        update_time=_timestamp(organization.updated_at),
        role=_role_to_proto(organization.role),
    )


def member_to_proto(member: store.MemberRecord) -> identity_pb2.Member:
    """The API's view of a membership."""
    return identity_pb2.Member(
        name=names.member_name(member.organization_id, member.user_id),
        user=names.user_name(member.user_id),
        email=member.email,
        display_name=member.display_name,
        role=_role_to_proto(member.role),
        create_time=_timestamp(member.created_at),
    )


def invitation_to_proto(invitation: store.InvitationRecord, now: datetime) -> identity_pb2.Invitation:
    """The API's view of an invitation (a pending one past its expiry shows as EXPIRED)."""
    state = invitation.state
    if state == "PENDING" and invitation.expires_at <= now:
        state = "EXPIRED"
    return identity_pb2.Invitation(
        name=names.invitation_name(invitation.organization_id, invitation.id),
        email=invitation.email,
        role=_role_to_proto(invitation.role),
        state=identity_pb2.Invitation.State.Value(state),
        expire_time=_timestamp(invitation.expires_at),
        create_time=_timestamp(invitation.created_at),
    )


def api_key_to_proto(key: store.ApiKeyRecord, now: datetime) -> identity_pb2.ApiKey:
    """The API's view of an API key (never its secret)."""
    if key.revoked_at is not None:
        state = identity_pb2.ApiKey.REVOKED
    elif key.expires_at is not None and key.expires_at <= now:
        state = identity_pb2.ApiKey.EXPIRED
    else:
        state = identity_pb2.ApiKey.ACTIVE
    return identity_pb2.ApiKey(
        name=names.api_key_name(key.organization_id, key.id),
        display_name=key.display_name,
        scopes=list(key.scopes),
        prefix=key.prefix,
        expire_time=_timestamp(key.expires_at),
        last_use_time=_timestamp(key.last_used_at),
        create_time=_timestamp(key.created_at),
        state=state,
    )


def client_address(context: Context) -> str | None:
    """The caller's address as the edge saw it (`x-qrmesh-client-ip`, believed only from a trusted peer;
    the edge derives it from X-Forwarded-For with its configured trusted hops), else the peer."""
    forwarded = None
    for key, value in context.invocation_metadata() or ():
        if key == CLIENT_IP_HEADER and isinstance(value, str):
            forwarded = value
    return ratelimit.client_address(context.peer() or "", forwarded) or None


class AuthServicer(identity_service_pb2_grpc.AuthServiceServicer):
    """Sign-up, login, sessions and the JWKS."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def SignUp(self, request: svc.SignUpRequest, context: Context) -> identity_pb2.User:
        user = await self.identity.sign_up(request.email, request.password, request.display_name)
        return user_to_proto(user)

    async def VerifyEmail(self, request: svc.VerifyEmailRequest, context: Context) -> identity_pb2.User:
        return user_to_proto(await self.identity.verify_email(request.token))

    async def Login(self, request: svc.LoginRequest, context: Context) -> identity_pb2.Session:
        session = await self.identity.login(request.email, request.password, client_address(context))
        return session_to_proto(session)

    async def Refresh(self, request: svc.RefreshRequest, context: Context) -> identity_pb2.Session:
        return session_to_proto(await self.identity.refresh(request.refresh_token))

    async def Logout(self, request: svc.LogoutRequest, context: Context) -> empty_pb2.Empty:
        await self.identity.logout(request.refresh_token)
        return empty_pb2.Empty()

    async def RequestPasswordReset(self, request: svc.RequestPasswordResetRequest, context: Context) -> empty_pb2.Empty:
        await self.identity.request_password_reset(request.email)
        return empty_pb2.Empty()

    async def ResetPassword(self, request: svc.ResetPasswordRequest, context: Context) -> empty_pb2.Empty:
        await self.identity.reset_password(request.token, request.new_password)
        return empty_pb2.Empty()

    async def GetJsonWebKeySet(self, request: svc.GetJsonWebKeySetRequest, context: Context) -> svc.JsonWebKeySet:
        keys = [identity_pb2.JsonWebKey(**key) for key in await self.identity.json_web_keys()]
        return svc.JsonWebKeySet(keys=keys)


class UserServicer(identity_service_pb2_grpc.UserServiceServicer):
    """The caller's own account."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def GetUser(self, request: svc.GetUserRequest, context: Context) -> identity_pb2.User:
        caller = _caller(current_principal())
        if request.name not in ("users/me", names.user_name(caller)):
            names.user_id(request.name, field="name")
            raise NotFound("the user does not exist")
        return user_to_proto(await self.identity.get_user(caller))

    async def ChangePassword(self, request: svc.ChangePasswordRequest, context: Context) -> empty_pb2.Empty:
        principal = current_principal()
        await self.identity.change_password(
            _caller(principal), request.current_password, request.new_password, keep_session=principal.session
        )
        return empty_pb2.Empty()


class OrganizationServicer(identity_service_pb2_grpc.OrganizationServiceServicer):
    """Organizations, members and invitations."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def CreateOrganization(
        self, request: svc.CreateOrganizationRequest, context: Context
    ) -> identity_pb2.Organization:
        caller = _caller(current_principal())
        organization = await self.identity.create_organization(
            caller, request.organization.display_name, request.request_id
        )
        return organization_to_proto(organization)

    async def ListOrganizations(
        self, request: svc.ListOrganizationsRequest, context: Context
    ) -> svc.ListOrganizationsResponse:
        caller = _caller(current_principal())
        page = await self.identity.list_organizations(caller, request.page_size, request.page_token)
        return svc.ListOrganizationsResponse(
            organizations=[organization_to_proto(item) for item in page.items], next_page_token=page.next_page_token
        )

    async def GetOrganization(self, request: svc.GetOrganizationRequest, context: Context) -> identity_pb2.Organization:
        principal = current_principal()
        organization = _organization(principal, request.name, field="name")
        found = await self.identity.get_organization(organization, _optional_role(principal))
        return organization_to_proto(found)

    async def UpdateOrganization(
        self, request: svc.UpdateOrganizationRequest, context: Context
    ) -> identity_pb2.Organization:
        principal = current_principal()
        organization = _organization(principal, request.organization.name, field="organization.name")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else ["display_name"]
        updated = await self.identity.update_organization(
            organization, paths, request.organization.display_name, _optional_role(principal)
        )
        return organization_to_proto(updated)

    async def ListMembers(self, request: svc.ListMembersRequest, context: Context) -> svc.ListMembersResponse:
        organization = _organization(current_principal(), request.parent, field="parent")
        page = await self.identity.list_members(organization, request.page_size, request.page_token)
        return svc.ListMembersResponse(
            members=[member_to_proto(item) for item in page.items], next_page_token=page.next_page_token
        )

    async def UpdateMember(self, request: svc.UpdateMemberRequest, context: Context) -> identity_pb2.Member:
        principal = current_principal()
        organization, user = _child(principal, request.member.name, "members", field="member.name")
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else ["role"]
        unknown = [path for path in paths if path != "role"]
        if unknown:
            raise InvalidArgument.field("updateMask", f"cannot update {unknown[0]!r}; only role can change")
        if not paths:
            raise InvalidArgument.field("updateMask", "must name role")
        role = _role_from_proto(request.member.role, field="member.role")
        member = await self.identity.update_member(organization, user, role, actor=_actor_role(principal))
        return member_to_proto(member)

    async def DeleteMember(self, request: svc.DeleteMemberRequest, context: Context) -> empty_pb2.Empty:
        principal = current_principal()
        organization, user = _child(principal, request.name, "members", field="name")
        await self.identity.delete_member(organization, user, actor_id=_caller(principal), actor=_actor_role(principal))
        return empty_pb2.Empty()

    async def CreateInvitation(
        self, request: svc.CreateInvitationRequest, context: Context
    ) -> svc.CreateInvitationResponse:
        principal = current_principal()
        organization = _organization(principal, request.parent, field="parent")
        email = request.invitation.email.strip()
        if not is_email(email):
            raise InvalidArgument.field("invitation.email", "must be an email address like name@example.com")
        role = _role_from_proto(request.invitation.role, field="invitation.role")
        invitation, token = await self.identity.create_invitation(
            organization, email, role, actor_id=_caller(principal), actor=_actor_role(principal)
        )
        return svc.CreateInvitationResponse(invitation=invitation_to_proto(invitation, utcnow()), token=token)

    async def ListInvitations(
        self, request: svc.ListInvitationsRequest, context: Context
    ) -> svc.ListInvitationsResponse:
        organization = _organization(current_principal(), request.parent, field="parent")
        page = await self.identity.list_invitations(organization, request.page_size, request.page_token)
        now = utcnow()
        return svc.ListInvitationsResponse(
            invitations=[invitation_to_proto(item, now) for item in page.items], next_page_token=page.next_page_token
        )

    async def DeleteInvitation(self, request: svc.DeleteInvitationRequest, context: Context) -> empty_pb2.Empty:
        organization, invitation = _child(current_principal(), request.name, "invitations", field="name")
        await self.identity.delete_invitation(organization, invitation)
        return empty_pb2.Empty()

    async def AcceptInvitation(self, request: svc.AcceptInvitationRequest, context: Context) -> identity_pb2.Member:
        caller = _caller(current_principal())
        return member_to_proto(await self.identity.accept_invitation(caller, request.token))


class ApiKeyServicer(identity_service_pb2_grpc.ApiKeyServiceServicer):
    """An organization's API keys."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def CreateApiKey(self, request: svc.CreateApiKeyRequest, context: Context) -> svc.CreateApiKeyResponse:
        principal = current_principal()
        organization = _organization(principal, request.parent, field="parent")
        key = request.api_key
        expires = key.expire_time.ToDatetime(tzinfo=UTC) if key.HasField("expire_time") else None
        record, secret = await self.identity.create_api_key(
            organization, key.display_name, list(key.scopes), expires, actor_id=_optional_user(principal)
        )
        return svc.CreateApiKeyResponse(api_key=api_key_to_proto(record, utcnow()), secret=secret)

    async def ListApiKeys(self, request: svc.ListApiKeysRequest, context: Context) -> svc.ListApiKeysResponse:
        organization = _organization(current_principal(), request.parent, field="parent")
        page = await self.identity.list_api_keys(organization, request.page_size, request.page_token)
        now = utcnow()
        return svc.ListApiKeysResponse(
            api_keys=[api_key_to_proto(item, now) for item in page.items], next_page_token=page.next_page_token
        )

    async def DeleteApiKey(self, request: svc.DeleteApiKeyRequest, context: Context) -> empty_pb2.Empty:
        organization, key = _child(current_principal(), request.name, "apiKeys", field="name")
        await self.identity.delete_api_key(organization, key)
        return empty_pb2.Empty()

    async def RotateApiKey(self, request: svc.RotateApiKeyRequest, context: Context) -> svc.CreateApiKeyResponse:
        principal = current_principal()
        organization, key = _child(principal, request.name, "apiKeys", field="name")
        record, secret = await self.identity.rotate_api_key(organization, key, actor_id=_optional_user(principal))
        return svc.CreateApiKeyResponse(api_key=api_key_to_proto(record, utcnow()), secret=secret)


class AccessServicer(identity_service_pb2_grpc.AccessServiceServicer):
    """Answers other services' questions about callers."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    async def AuthenticateApiKey(self, request: svc.AuthenticateApiKeyRequest, context: Context) -> svc.ApiKeyIdentity:
        key = await self.identity.authenticate_api_key(request.secret)
        if key is None:
            raise Unauthenticated("the API key is invalid, revoked or expired", reason="INVALID_API_KEY")
        return svc.ApiKeyIdentity(
            name=names.api_key_name(key.organization_id, key.id),
            organization=names.organization_name(key.organization_id),
            scopes=list(key.scopes),
            expire_time=_timestamp(key.expires_at),
        )

    async def GetRole(self, request: svc.GetRoleRequest, context: Context) -> svc.GetRoleResponse:
        organization = names.organization_id(request.organization, field="organization")
        user = names.user_id(request.user, field="user")
        role = await self.identity.role(organization, user)
        return svc.GetRoleResponse(role=_role_to_proto(None if role is None else role.value))


def _optional_role(principal: Principal) -> MemberRole | None:
    return None if principal.role is None else MemberRole(principal.role.name)


def _optional_user(principal: Principal) -> str | None:
    return None if principal.user is None else names.user_id(principal.user, field="principal")
