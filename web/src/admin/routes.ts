// The admin screens' entries of the route table (app/routes.tsx spreads them in): admins
// only, one navigation entry ("Admin"), the other screens reached by the admin tabs.
import { Role } from "@gen/medmesh/common/v1/common_pb";
import type { RouteDef } from "../app/routes";
import { DeadLettersPage } from "./DeadLettersPage";
import { DeliveryPage } from "./DeliveryPage";
import { ModelsPage } from "./ModelsPage";
import { UsersPage } from "./UsersPage";

const ADMIN = [Role.ADMIN] as const;

export const ADMIN_ROUTES: RouteDef[] = [
  { path: "/admin/users", page: UsersPage, access: "roles", roles: ADMIN, nav: "nav.admin", navSection: "/admin/" },
  { path: "/admin/delivery", page: DeliveryPage, access: "roles", roles: ADMIN },
  { path: "/admin/models", page: ModelsPage, access: "roles", roles: ADMIN },
  { path: "/admin/dead-letters", page: DeadLettersPage, access: "roles", roles: ADMIN },
];
